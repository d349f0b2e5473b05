"""Ray job entrypoint for rayworks `train` jobs.

Submit it (from a checkout, with the local cluster up):

    rayworks submit jobs/configs/train.yaml --follow

or with Ray's own CLI (token auth on: the client must say so):

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python jobs/train.py --config jobs/configs/train.yaml
"""

import sys

from rayworks.jobmain import main

if __name__ == "__main__":
    sys.exit(main("train"))
