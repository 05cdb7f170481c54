#!/bin/sh
# The janitor agent of the demo, offline: every other run finds a page left over and
# asks to be run again at once (al-rerun).
set -eu
pages="$CORRAL_SHARED_DIR/.janitor-pages"
count=$(cat "$pages" 2>/dev/null || echo 0)
count=$((count + 1))
echo "$count" > "$pages"
al-status "closing stale issues, page $count"
sleep 1
if [ $((count % 2)) -eq 1 ]; then
  echo "page $count done; more left"
  al-rerun
else
  echo "page $count done; nothing left"
fi
