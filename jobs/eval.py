"""Ray job entrypoint for rayworks `eval` jobs (score an export; promotion gate).

Submit it (from a checkout, with the local cluster up):

    rayworks submit jobs/configs/eval.yaml --follow

or with Ray's own CLI (token auth on: the client must say so):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/eval.py --config jobs/configs/eval.yaml --base-dir "$PWD"

(``--base-dir`` makes relative paths mean this folder, not Ray's temporary copy of it).
An installed rayworks needs no jobs/ folder: ``python -m rayworks.jobmain eval --config ...``.
"""

import sys

from rayworks.jobmain import main

if __name__ == "__main__":
    sys.exit(main("eval"))
