"""`python -m tdmpc_ray <verb>`: the same as the `tdmpc-ray` command, for nodes and jobs where the
package is importable (e.g. from a Ray job's working_dir) but its console script is not on PATH."""

import sys

from tdmpc_ray.cli import main

sys.exit(main())
