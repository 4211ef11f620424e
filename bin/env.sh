# Sourced by the bin/ scripts: where builds go. A fixed path outside the clone, so that a fresh clone
# (and CI) rebuilds only what changed.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/fjord/target}
# The Python clients' virtualenv (bin/setup fills it; the SQL tests run its python).
export FJORD_VENV=${FJORD_VENV:-/var/cache/fjord/venv}
