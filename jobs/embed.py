"""Ray job entrypoint for rayworks `embed` jobs.

Submit it (from a checkout, with the local cluster up):

    rayworks submit jobs/configs/embed.yaml --follow

or with Ray's own CLI (token auth on: the client must say so):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/embed.py --config jobs/configs/embed.yaml --base-dir "$PWD"

(``--base-dir`` makes relative paths mean this folder, not Ray's temporary copy of it;
without it the job refuses rather than read or write there). An installed rayworks needs
no jobs/ folder: ``python -m rayworks.jobmain embed --config ...`` is the same entrypoint.
"""

import sys

from rayworks.jobmain import main

if __name__ == "__main__":
    sys.exit(main("embed"))
