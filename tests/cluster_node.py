"""`ray start` of a worker node on the head's machine, on loopback only: what tests/test_two_nodes.py runs in a mount
namespace of its own, so the worker cannot see the head's folders (a second machine, as far as files go).

Ray refuses to join a worker while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the switch that keeps a local Ray on
127.0.0.1), and with the switch on it turns the head's 127.0.0.1 into this machine's network address. Both are
undone for this one process: its children (raylet, workers) keep the loopback switch from the environment.
"""

import sys

import ray._private.ray_constants as constants
import ray._private.services as services

constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host

from ray.scripts.scripts import main  # noqa: E402  (after the two changes above)

sys.argv = ["ray", "start", *sys.argv[1:]]
main()
