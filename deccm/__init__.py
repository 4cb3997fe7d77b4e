"""deccm: background-music recommendation for short videos (DecCM). See README.md and docs/architecture.md."""
import os

# torch's OpenMP threads spin while they wait for work. On a machine whose cores are busy
# with other processes (rendering workers, ffmpeg, a second job) that spinning burned 2.8x the
# CPU and took 2.8x the wall time of one thread when extracting features (docs/benchmarks.md);
# passive waiting keeps most of the two-thread speed on an idle machine. It must be set before
# torch loads its OpenMP runtime, so here, before any deccm module imports torch; a value the
# user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
