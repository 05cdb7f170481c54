#!/bin/sh
# The dev agent of the demo, offline: what SKILL.md says, done by a script.
set -eu
trigger=$(sed -n '/<webhook-trigger>/,/<\/webhook-trigger>/p' "$CORRAL_PROMPT_FILE" | sed '1d;$d')
number=$(printf '%s' "$trigger" | python3 -c 'import json,sys; print(json.load(sys.stdin)["number"])')
repo=$(printf '%s' "$trigger" | python3 -c 'import json,sys; print(json.load(sys.stdin)["repo"])')
key="github://$repo/issues/$number"
if ! answer=$(rlock "$key"); then
  echo "issue #$number is taken: $answer"
  exit 0
fi
echo "locked $key"
# How long each step takes: `corral demo` sets the pace so the work fills its minute.
step=$(cat "$CORRAL_SHARED_DIR/.demo-step" 2>/dev/null || echo 1)
for what in "reading" "fixing" "testing the fix for"; do
  al-status "$what #$number"
  sleep "$step"
done
al-status "waiting for review of #$number"
call=$(echo "please review the fix for #$number in $repo" | al-subagent reviewer)
id=$(printf '%s' "$call" | python3 -c 'import json,sys; print(json.load(sys.stdin)["callId"])')
review=$(al-subagent-wait "$id" --timeout 60)
echo "review: $review"
runlock "$key" >/dev/null
echo "done with #$number"
