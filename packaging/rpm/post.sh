# handover %post: on an upgrade ($1 >= 2), re-execute every running handover manager from
# the new binary in place (same pid, sockets and workers). Starts and enables nothing.
if [ "$1" -ge 2 ]; then
    /usr/bin/handover upgrade --all || true
fi
