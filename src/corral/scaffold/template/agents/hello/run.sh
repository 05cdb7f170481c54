#!/bin/sh
# A stand-in for a coding agent: it receives exactly what a real one would.
#   stdin / $CORRAL_PROMPT_FILE         the assembled prompt (<agent-config>, <environment>, trigger)
#   $CORRAL_SYSTEM_PROMPT_FILE          the body of SKILL.md
#   $CORRAL_SHARED_DIR                  the project's shared/ folder
set -eu

echo "run $CORRAL_RUN_ID of agent $CORRAL_AGENT (trigger: $CORRAL_TRIGGER)"
echo "instructions: $(grep -m1 '^# ' "$CORRAL_SYSTEM_PROMPT_FILE")"
echo "prompt:"
sed 's/^/  | /' "$CORRAL_PROMPT_FILE"

{
  echo "# Report from $CORRAL_RUN_ID"
  echo
  echo "Shared context files:"
  find "$CORRAL_SHARED_DIR" -type f | sed "s|^$CORRAL_SHARED_DIR/|- |"
} > report.md

echo "wrote $(pwd)/report.md"
