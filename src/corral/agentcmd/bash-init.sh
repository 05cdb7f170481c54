# corral: sourced by every non-interactive shell of a run (BASH_ENV points here).
#
# Defines `setenv NAME VALUE [NAME VALUE ...]`, which exports the variables in the
# current shell and appends `export NAME='value'` lines to $CORRAL_ENV_FILE, then
# loads that file so each new shell of the run sees what earlier ones set.
# The `setenv` executable does the same minus the export (a child process cannot
# change its parent's environment); both validate and report alike. The file does not
# exist before the run's first setenv, which makes it (0600).

_corral_setenv() {
    _corral_usage='usage: setenv NAME VALUE [NAME VALUE ...]'
    _corral_count=0
    _corral_name=
    _corral_lines=
    for _corral_arg in "$@"; do
        if [ -z "$_corral_name" ]; then
            if [ "$_corral_arg" = setenv ]; then
                continue
            fi
            case $_corral_arg in
                '' | [0123456789]* | *[!ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_]*)
                    printf "setenv: invalid variable name '%s': use letters, digits and _, not starting with a digit\n" "$_corral_arg" >&2
                    return 9
                    ;;
            esac
            _corral_name=$_corral_arg
        else
            _corral_rest=$_corral_arg
            _corral_quoted=
            while :; do
                case $_corral_rest in
                    *\'*)
                        _corral_quoted="$_corral_quoted${_corral_rest%%\'*}'\\''"
                        _corral_rest=${_corral_rest#*\'}
                        ;;
                    *)
                        _corral_quoted="$_corral_quoted$_corral_rest"
                        break
                        ;;
                esac
            done
            _corral_lines="${_corral_lines}export $_corral_name='$_corral_quoted'
"
            _corral_count=$((_corral_count + 1))
            _corral_name=
        fi
    done
    if [ -n "$_corral_name" ]; then
        printf 'setenv: %s has no value; %s\n' "$_corral_name" "$_corral_usage" >&2
        return 9
    fi
    if [ "$_corral_count" -eq 0 ]; then
        printf 'setenv: %s\n' "$_corral_usage" >&2
        return 9
    fi
    if [ -z "${CORRAL_ENV_FILE:-}" ]; then
        printf 'setenv: CORRAL_ENV_FILE is not set: setenv only works inside a corral run\n' >&2
        return 9
    fi
    # The run's first setenv makes the file, private (0600) whatever the umask.
    if [ ! -e "$CORRAL_ENV_FILE" ]; then
        (umask 077 && : >>"$CORRAL_ENV_FILE") 2>/dev/null
    fi
    if ! { printf '%s' "$_corral_lines" >>"$CORRAL_ENV_FILE"; } 2>/dev/null; then
        printf 'setenv: cannot write to CORRAL_ENV_FILE (%s)\n' "$CORRAL_ENV_FILE" >&2
        return 9
    fi
    # The checks passed and the file has the lines: now export, pair by pair.
    for _corral_arg in "$@"; do
        if [ -z "$_corral_name" ]; then
            if [ "$_corral_arg" != setenv ]; then
                _corral_name=$_corral_arg
            fi
        else
            export "$_corral_name=$_corral_arg"
            _corral_name=
        fi
    done
    if [ "$_corral_count" -eq 1 ]; then
        printf 'set 1 variable\n'
    else
        printf 'set %s variables\n' "$_corral_count"
    fi
}

setenv() {
    if _corral_setenv "$@"; then
        set -- 0
    else
        set -- "$?"
    fi
    unset _corral_usage _corral_count _corral_name _corral_lines _corral_arg \
        _corral_rest _corral_quoted
    return "$1"
}

if [ -n "${CORRAL_ENV_FILE:-}" ] && [ -f "$CORRAL_ENV_FILE" ]; then
    . "$CORRAL_ENV_FILE"
fi
