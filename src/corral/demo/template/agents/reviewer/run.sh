#!/bin/sh
# The reviewer agent of the demo, offline: reads the call, answers with al-return.
set -eu
ask=$(sed -n '/<agent-call>/,/<\/agent-call>/p' "$CORRAL_PROMPT_FILE" | sed '1d;$d')
echo "asked: $ask"
al-status "reviewing"
sleep 1
al-return "LGTM"
