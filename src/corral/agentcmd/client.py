"""The in-run commands' client: one HTTP request to the corral gateway, its answer printed.

Installed next to the command scripts as ``_corral_agentcmd.py`` and run under
``python -S -I``, so it must stay stdlib-only and import nothing slow: ``sys``, ``posix``
and ``time`` (all loaded before any code runs) and the C module ``_socket``. Not
``socket`` (enum and friends, ~8 ms) nor ``os`` (~1.3 ms of a ~12 ms command; ``posix``
is the C module under it) nor ``json`` (``re``).
It writes its own JSON and never parses the gateway's: the answer's body is printed
verbatim and the exit code comes from the HTTP status.
"""

import _socket
import posix
import sys
import time

EXIT_OK = 0
EXIT_CONFLICT = 1
EXIT_NOT_FOUND = 2
EXIT_FORBIDDEN = 3
EXIT_BAD_REQUEST = 4
EXIT_UNAVAILABLE = 5
EXIT_UNREACHABLE = 6
EXIT_OTHER = 7
EXIT_PENDING = 8
EXIT_USAGE = 9
EXIT_BAD_GATEWAY = 10
EXIT_GATEWAY_TIMEOUT = 11
EXIT_SERVER_ERROR = 12
EXIT_LOCK_LOST = 13

STATUS_EXIT = {
    200: EXIT_OK,
    409: EXIT_CONFLICT,
    404: EXIT_NOT_FOUND,
    403: EXIT_FORBIDDEN,
    400: EXIT_BAD_REQUEST,
    413: EXIT_BAD_REQUEST,
    422: EXIT_BAD_REQUEST,
    503: EXIT_UNAVAILABLE,
    502: EXIT_BAD_GATEWAY,
    504: EXIT_GATEWAY_TIMEOUT,
    500: EXIT_SERVER_ERROR,
    410: EXIT_LOCK_LOST,
}

USAGE = {
    "rlock": "rlock <resourceKey> [--wait [--timeout SECONDS]]",
    "runlock": "runlock <resourceKey>",
    "rlock-heartbeat": "rlock-heartbeat <resourceKey>",
    "al-subagent": "al-subagent <agent> (the context is read from stdin)",
    "al-subagent-check": "al-subagent-check <callId>",
    "al-subagent-wait": "al-subagent-wait <callId> [<callId> ...] [--timeout SECONDS]",
    "al-return": "al-return [value ...] (no arguments: the value is read from stdin)",
    "al-rerun": "al-rerun",
    "al-status": "al-status <text ...>",
    "al-exit": "al-exit [code 0-255, default 15]",
    "al-shutdown": "al-shutdown [reason ...]",
    "setenv": "setenv NAME VALUE [NAME VALUE ...]",
    "task-claim": "task-claim [--project PROJECT] [--label LABEL]... [--min-priority N] "
    "[--lease SECONDS]",
    "task-heartbeat": "task-heartbeat <taskId> [--project PROJECT]",
    "task-complete": "task-complete <taskId> [--result TEXT] [--project PROJECT]",
    "task-release": "task-release <taskId> [--project PROJECT]",
    "task-fail": "task-fail <taskId> [--reason TEXT] [--project PROJECT]",
}

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
DEFAULT_WAIT_TIMEOUT = 900
# rlock --wait without --timeout waits as long as the gateway's default; the client only
# guards against a gateway that never answers.
UNBOUNDED_WAIT_CEILING = 24 * 3600.0
MAX_TIMEOUT = 1e8

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
_CTRL_ESCAPES = {9: "\\t", 10: "\\n", 13: "\\r"}
_JSON_CTRL = tuple(_CTRL_ESCAPES.get(i, f"\\u{i:04x}") for i in range(32))
_NAME_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_NAME_REST = _NAME_FIRST + "0123456789"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class Failure(Exception):
    """A client-side failure: ``message`` is printed as ``{"ok":false,"error":...}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Usage(Exception):
    """The arguments do not fit the command's usage line."""


# -- JSON and text ------------------------------------------------------------------------


def json_string(text: str) -> str:
    """``text`` as a JSON string literal; non-ASCII stays as it is (sent as UTF-8)."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if '"' in text:
        text = text.replace('"', '\\"')
    if not text.isprintable():
        for code in range(32):
            char = chr(code)
            if char in text:
                text = text.replace(char, _JSON_CTRL[code])
    return '"' + text + '"'


def error_json(command: str, message: str) -> str:
    status = '"status":"error",' if command == "al-subagent-check" else ""
    return '{"ok":false,' + status + '"error":' + json_string(message) + "}"


def fsencode(text: str) -> bytes:
    """``os.fsencode``: the bytes the OS gave (arguments, environment) for ``text``."""
    return text.encode(_FS_ENCODING, _FS_ERRORS)


def getenv(name: str) -> str:
    """An environment variable, "" when unset (``os.environ`` without importing os)."""
    return posix.environ.get(name.encode(), b"").decode(_FS_ENCODING, _FS_ERRORS)


def from_argv(arg: str) -> str:
    """An argument as UTF-8 text: bytes that are not UTF-8 become U+FFFD, like stdin."""
    return fsencode(arg).decode("utf-8", "replace")


def read_stdin() -> str:
    """All of stdin as text, or "" when stdin is a terminal or closed."""
    stdin = sys.stdin
    if stdin is None:
        return ""
    try:
        if posix.isatty(0):
            return ""
        data = stdin.buffer.read()
    except (OSError, ValueError):
        return ""
    return data.decode("utf-8", "replace")


def percent_encode(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        out.append(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}")
    return "".join(out)


def is_name(name: str) -> bool:
    if not name or name[0] not in _NAME_FIRST:
        return False
    for char in name:
        if char not in _NAME_REST:
            return False
    return True


# -- arguments ----------------------------------------------------------------------------


def parse(
    argv: list[str], flags: tuple[str, ...], valued: tuple[str, ...]
) -> tuple[list[str], dict[str, str]]:
    """Positionals and options; options may come anywhere, ``--`` ends them."""
    positionals: list[str] = []
    options: dict[str, str] = {}
    index = 0
    only_positionals = False
    while index < len(argv):
        arg = argv[index]
        index += 1
        if only_positionals or not arg.startswith("-") or arg == "-":
            positionals.append(arg)
        elif arg == "--":
            only_positionals = True
        elif arg in flags:
            options[arg] = ""
        elif arg in valued:
            if index >= len(argv):
                raise Usage()
            options[arg] = argv[index]
            index += 1
        elif "=" in arg and arg.split("=", 1)[0] in valued:
            name, value = arg.split("=", 1)
            options[name] = value
        else:
            raise Usage()
    return positionals, options


def seconds(text: str) -> tuple[str, float]:
    """A non-negative number of seconds: its JSON form and its value."""
    whole, dot, fraction = text.partition(".")
    if not whole.isdigit() or not whole.isascii():
        raise Usage()
    if dot and (not fraction.isdigit() or not fraction.isascii()):
        raise Usage()
    literal = str(int(whole)) + (dot + fraction if dot else "")
    return literal, float(literal)


def one_key(argv: list[str]) -> str:
    positionals, _ = parse(argv, (), ())
    if len(positionals) != 1 or not positionals[0]:
        raise Usage()
    return from_argv(positionals[0])


# -- commands -----------------------------------------------------------------------------

Request = tuple[str, str, str | None, float]


def rlock(argv: list[str]) -> Request:
    positionals, options = parse(argv, ("--wait",), ("--timeout",))
    if len(positionals) != 1 or not positionals[0]:
        raise Usage()
    key = json_string(from_argv(positionals[0]))
    if "--wait" not in options:
        if "--timeout" in options:
            raise Usage()
        return "POST", "/agent/locks/acquire", '{"key":' + key + "}", REQUEST_TIMEOUT
    if "--timeout" not in options:
        body = '{"key":' + key + ',"wait":true}'
        return "POST", "/agent/locks/acquire", body, UNBOUNDED_WAIT_CEILING + REQUEST_TIMEOUT
    literal, value = seconds(options["--timeout"])
    body = '{"key":' + key + ',"wait":true,"timeout":' + literal + "}"
    return "POST", "/agent/locks/acquire", body, value + REQUEST_TIMEOUT


def runlock(argv: list[str]) -> Request:
    body = '{"key":' + json_string(one_key(argv)) + "}"
    return "POST", "/agent/locks/release", body, REQUEST_TIMEOUT


def rlock_heartbeat(argv: list[str]) -> Request:
    body = '{"key":' + json_string(one_key(argv)) + "}"
    return "POST", "/agent/locks/heartbeat", body, REQUEST_TIMEOUT


def al_subagent(argv: list[str]) -> Request:
    agent = one_key(argv)
    body = '{"agent":' + json_string(agent) + ',"context":' + json_string(read_stdin()) + "}"
    return "POST", "/agent/calls", body, REQUEST_TIMEOUT


def al_subagent_check(argv: list[str]) -> Request:
    return "GET", "/agent/calls/" + percent_encode(one_key(argv)), None, REQUEST_TIMEOUT


def al_subagent_wait(argv: list[str]) -> Request:
    positionals, options = parse(argv, (), ("--timeout",))
    if not positionals or "" in positionals:
        raise Usage()
    literal, value = str(DEFAULT_WAIT_TIMEOUT), float(DEFAULT_WAIT_TIMEOUT)
    if "--timeout" in options:
        literal, value = seconds(options["--timeout"])
    ids = ",".join(json_string(from_argv(call_id)) for call_id in positionals)
    body = '{"callIds":[' + ids + '],"timeout":' + literal + "}"
    return "POST", "/agent/calls/wait", body, value + REQUEST_TIMEOUT


def al_return(argv: list[str]) -> Request:
    value = " ".join(from_argv(arg) for arg in argv) if argv else read_stdin()
    return "POST", "/agent/return", '{"value":' + json_string(value) + "}", REQUEST_TIMEOUT


def al_status(argv: list[str]) -> Request:
    if not argv:
        raise Usage()
    text = " ".join(from_argv(arg) for arg in argv)
    return "POST", "/agent/status", '{"text":' + json_string(text) + "}", REQUEST_TIMEOUT


def al_rerun(argv: list[str]) -> Request:
    if argv:
        raise Usage()
    return "POST", "/agent/rerun", "{}", REQUEST_TIMEOUT


def al_exit(argv: list[str]) -> Request:
    if len(argv) > 1:
        raise Usage()
    code = 15
    if argv:
        text = argv[0]
        if not text.isdigit() or not text.isascii() or int(text) > 255:
            raise Usage()
        code = int(text)
    return "POST", "/agent/exit", '{"code":' + str(code) + "}", REQUEST_TIMEOUT


def al_shutdown(argv: list[str]) -> Request:
    # Action Llama's default reason; the words of several arguments are joined.
    reason = " ".join(from_argv(arg) for arg in argv).strip() or "agent requested shutdown"
    return "POST", "/agent/shutdown", '{"reason":' + json_string(reason) + "}", REQUEST_TIMEOUT


def _claim_options(argv: list[str]) -> list[tuple[str, str]]:
    """``task-claim``'s options, ``--name value`` or ``--name=value``, in order."""
    options: list[tuple[str, str]] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        name, eq, value = arg.partition("=")
        if name not in ("--project", "--label", "--lease", "--min-priority"):
            raise Usage()
        if not eq:
            if index >= len(argv):
                raise Usage()
            value = argv[index]
            index += 1
        if not value:
            raise Usage()
        options.append((name, value))
    return options


def _whole(value: str) -> str:
    """A whole number of at most nine digits, as JSON; Usage otherwise."""
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise Usage()
    return str(int(value))


def _stream_filter() -> tuple[str, list[str], str]:
    """The filter of the ``[[tasks]]`` trigger that started this run, if one did."""
    environ = posix.environ
    project = environ.get(b"CORRAL_TASK_PROJECT", b"").decode("utf-8", "replace")
    labels = environ.get(b"CORRAL_TASK_LABELS", b"").decode("utf-8", "replace")
    least = environ.get(b"CORRAL_TASK_MIN_PRIORITY", b"").decode("ascii", "replace")
    try:
        min_priority = _whole(least) if least else ""
    except Usage:
        min_priority = ""
    return project, [json_string(label) for label in labels.split(",") if label], min_priority


def task_claim(argv: list[str]) -> Request:
    """``--label`` may be given several times (the task must have every one);
    ``--min-priority N``: only tasks of priority N or more. Without ``--project``,
    ``--label`` and ``--min-priority``, a run the task board started claims with its
    trigger's filter (``CORRAL_TASK_PROJECT``, ``CORRAL_TASK_LABELS``,
    ``CORRAL_TASK_MIN_PRIORITY``). ``--lease SECONDS``: how long the claim lasts without
    a heartbeat (the server checks the bounds, and those of the priority)."""
    project = ""
    lease = ""
    min_priority = ""
    labels: list[str] = []
    for name, value in _claim_options(argv):
        if name == "--project":
            project = from_argv(value)
        elif name == "--lease":
            lease = _whole(value)
        elif name == "--min-priority":
            min_priority = _whole(value)
        else:
            labels.append(json_string(from_argv(value)))
    if not project and not labels and not min_priority:
        project, labels, min_priority = _stream_filter()
    body = '{"labels":[' + ",".join(labels) + "]"
    if project:
        body += ',"project":' + json_string(project)
    if min_priority and min_priority != "1":
        body += ',"minPriority":' + min_priority
    if lease:
        body += ',"lease":' + lease
    return "POST", "/agent/tasks/claim", body + "}", REQUEST_TIMEOUT


def task_request(argv: list[str], path: str, text: str = "") -> Request:
    """A request about one task this run holds: its id, its --project if given, and the
    text option named ``text`` (``--result``, ``--reason``) if any."""
    valued = ("--project", "--" + text) if text else ("--project",)
    positionals, options = parse(argv, (), valued)
    if len(positionals) != 1 or not positionals[0]:
        raise Usage()
    body = '{"id":' + json_string(from_argv(positionals[0]))
    if "--project" in options:
        body += ',"project":' + json_string(from_argv(options["--project"]))
    if text and "--" + text in options:
        body += ',"' + text + '":' + json_string(from_argv(options["--" + text]))
    return "POST", "/agent/tasks/" + path, body + "}", REQUEST_TIMEOUT


def task_heartbeat(argv: list[str]) -> Request:
    return task_request(argv, "heartbeat")


def task_complete(argv: list[str]) -> Request:
    return task_request(argv, "complete", "result")


def task_release(argv: list[str]) -> Request:
    return task_request(argv, "release")


def task_fail(argv: list[str]) -> Request:
    return task_request(argv, "fail", "reason")


HANDLERS = {
    "rlock": rlock,
    "runlock": runlock,
    "rlock-heartbeat": rlock_heartbeat,
    "al-subagent": al_subagent,
    "al-subagent-check": al_subagent_check,
    "al-subagent-wait": al_subagent_wait,
    "al-return": al_return,
    "al-rerun": al_rerun,
    "al-status": al_status,
    "al-exit": al_exit,
    "al-shutdown": al_shutdown,
    "task-claim": task_claim,
    "task-heartbeat": task_heartbeat,
    "task-complete": task_complete,
    "task-release": task_release,
    "task-fail": task_fail,
}


# -- setenv -------------------------------------------------------------------------------


def shell_quote(value: bytes) -> bytes:
    return b"'" + value.replace(b"'", b"'\\''") + b"'"


def setenv(argv: list[str]) -> int:
    """Append ``export NAME='value'`` lines to $CORRAL_ENV_FILE (bash-init.sh has the twin)."""
    usage = "usage: " + USAGE["setenv"]
    lines = []
    index = 0
    while index < len(argv):
        name = argv[index]
        index += 1
        if name == "setenv":
            continue
        if not is_name(name):
            return complain(
                "invalid variable name '" + name + "': use letters, digits and _, "
                "not starting with a digit"
            )
        if index >= len(argv):
            return complain(name + " has no value; " + usage)
        # The value's bytes as they came (as the shell function writes them).
        value = shell_quote(fsencode(argv[index]))
        lines.append(b"export " + name.encode() + b"=" + value + b"\n")
        index += 1
    if not lines:
        return complain(usage)
    path = getenv("CORRAL_ENV_FILE")
    if not path:
        return complain("CORRAL_ENV_FILE is not set: setenv only works inside a corral run")
    data = b"".join(lines)
    try:
        fd = posix.open(path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT, 0o600)
        try:
            while data:
                data = data[posix.write(fd, data) :]
        finally:
            posix.close(fd)
    except OSError:
        return complain("cannot write to CORRAL_ENV_FILE (" + path + ")")
    count = len(lines)
    emit(("set 1 variable" if count == 1 else f"set {count} variables").encode())
    return EXIT_OK


def complain(message: str) -> int:
    try:
        sys.stderr.write("setenv: " + message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    return EXIT_USAGE


# -- HTTP ---------------------------------------------------------------------------------


AddressList = list[
    tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]]
]


class Gateway:
    """Where ``GATEWAY_URL`` points: a TCP host and port (with a path prefix) or a socket."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.unix_path = ""
        self.host = ""
        self.port = 80
        self.host_header = "corral"
        self.prefix = ""
        if url.startswith("unix:"):
            path = url[5:]
            if path.startswith("///"):
                path = path[2:]
            if not path.startswith("/"):
                raise self.malformed("unix: must be followed by an absolute socket path")
            self.unix_path = path
            return
        if not url.startswith("http://"):
            raise self.malformed("use http://HOST:PORT or unix:/path/to/socket")
        rest = url[7:]
        netloc, slash, path = rest.partition("/")
        if not netloc or "@" in netloc or "?" in rest or "#" in rest:
            raise self.malformed("use http://HOST:PORT or unix:/path/to/socket")
        self.host_header = netloc
        if netloc.startswith("["):
            host, bracket, after = netloc[1:].partition("]")
            if not bracket or (after and not after.startswith(":")):
                raise self.malformed("bad IPv6 address")
            port = after[1:] if after else ""
        else:
            host, colon, port = netloc.partition(":")
            if colon and not port:
                raise self.malformed("missing port")
        if port:
            if not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536:
                raise self.malformed("bad port " + repr(port))
            self.port = int(port)
        if not host:
            raise self.malformed("missing host")
        self.host = host
        self.prefix = ("/" + path).rstrip("/") if slash else ""

    def malformed(self, why: str) -> Failure:
        return Failure(EXIT_UNAVAILABLE, "GATEWAY_URL " + repr(self.url) + " is malformed: " + why)

    def unreachable(self, reason: str) -> Failure:
        return Failure(
            EXIT_UNREACHABLE, "cannot reach the corral gateway at " + self.url + ": " + reason
        )

    def addresses(self) -> AddressList:
        """Where to connect. IP literals and localhost skip the resolver: its first call
        loads the NSS modules and reads their files, some 3 ms of a command's ~12."""
        stream = _socket.SOCK_STREAM
        if self.host == "localhost":
            return [
                (_socket.AF_INET, stream, 0, "", ("127.0.0.1", self.port)),
                (_socket.AF_INET6, stream, 0, "", ("::1", self.port, 0, 0)),
            ]
        for family, address in (
            (_socket.AF_INET, (self.host, self.port)),
            (_socket.AF_INET6, (self.host, self.port, 0, 0)),
        ):
            try:
                _socket.inet_pton(family, self.host)
            except (OSError, ValueError):
                continue
            return [(family, stream, 0, "", address)]
        return _socket.getaddrinfo(self.host, self.port, 0, stream)

    def connect(self) -> _socket.socket:
        if self.unix_path:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            try:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(self.unix_path)
            except OSError as exc:
                sock.close()
                raise self.unreachable(describe(exc, "connecting")) from None
            return sock
        try:
            addresses = self.addresses()
        except OSError as exc:
            raise self.unreachable(
                "cannot resolve " + self.host + ": " + describe(exc, "")
            ) from None
        except UnicodeError:  # the IDNA codec refuses the name
            raise self.unreachable("cannot resolve " + self.host + ": not a host name") from None
        problem = "no address for " + self.host
        for family, kind, proto, _, address in addresses:
            sock = _socket.socket(family, kind, proto)
            try:
                sock.settimeout(CONNECT_TIMEOUT)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                problem = describe(exc, "connecting")
                continue
            return sock
        raise self.unreachable(problem)

    def request(
        self, method: str, path: str, body: str | None, timeout: float
    ) -> tuple[int, bytes]:
        secret = getenv("CORRAL_RUN_SECRET")
        if not secret:
            raise Failure(
                EXIT_UNAVAILABLE,
                "CORRAL_RUN_SECRET is not set: corral's in-run commands only work inside a "
                "corral run",
            )
        if not secret.isascii() or not secret.isprintable():
            raise Failure(
                EXIT_UNAVAILABLE, "CORRAL_RUN_SECRET holds characters a header cannot carry"
            )
        head = (
            method + " " + self.prefix + path + " HTTP/1.1\r\n"
            "Host: " + self.host_header + "\r\n"
            "Authorization: Bearer " + secret + "\r\n"
            "Accept: application/json\r\n"
            "User-Agent: corral-agentcmd\r\n"
            "Connection: close\r\n"
        )
        payload = b""
        if body is not None:
            payload = body.encode("utf-8")
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        message = (head + "\r\n").encode("utf-8", "surrogateescape") + payload
        deadline = time.monotonic() + min(timeout, MAX_TIMEOUT)
        sock = self.connect()
        try:
            return self.exchange(sock, message, deadline, timeout)
        finally:
            sock.close()

    def exchange(
        self, sock: _socket.socket, message: bytes, deadline: float, timeout: float
    ) -> tuple[int, bytes]:
        late = "no answer within " + format(timeout, "g") + " seconds"
        problem = ""
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(message)
        except TimeoutError:
            raise self.unreachable(late) from None
        except OSError as exc:
            # The gateway may have answered (403, 413) and closed before reading it all.
            problem = describe(exc, "sending")
        data, response, read_problem = receive(sock, deadline)
        if read_problem == "late":
            raise self.unreachable(late)
        if response is None:
            if data:
                raise self.unreachable("the connection closed in the middle of the answer")
            raise self.unreachable(
                problem or read_problem or "the connection closed before an answer"
            )
        if response.status < 0:
            raise self.unreachable("the answer is not HTTP")
        body = response.body(data)
        if body is None:
            raise self.unreachable("the connection closed in the middle of the answer")
        return response.status, body


def receive(sock: _socket.socket, deadline: float) -> tuple[bytearray, "Response | None", str]:
    """What arrives until EOF (or a complete Content-Length body), its head, a problem."""
    data = bytearray()
    response: Response | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, response, "late"
        try:
            sock.settimeout(left)
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, response, "late"
        except OSError as exc:
            return data, response, describe(exc, "reading")
        if not chunk:
            return data, response, ""
        data += chunk
        if response is None:
            response = Response.parse(data)
        if response is not None and response.complete(data):
            return data, response, ""


class Response:
    """The status line and headers of an HTTP answer; the body stays in the buffer."""

    def __init__(self, status: int, start: int, length: int, chunked: bool) -> None:
        self.status = status
        self.start = start
        self.length = length
        self.chunked = chunked

    @staticmethod
    def parse(data: bytearray) -> "Response | None":
        """The final (non-1xx) answer's head, once all of it is in ``data``."""
        start = 0
        while True:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                return None
            lines = bytes(data[start:end]).split(b"\r\n")
            parts = lines[0].split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
                return Response(-1, end + 4, -1, False)
            status = int(parts[1])
            if 100 <= status < 200:
                start = end + 4
                continue
            length = -1
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length" and value.strip().isdigit():
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                length = -1
            return Response(status, end + 4, length, chunked)

    def complete(self, data: bytearray) -> bool:
        return self.length >= 0 and len(data) - self.start >= self.length

    def body(self, data: bytearray) -> bytes | None:
        """The body, or None when the connection closed before all of it arrived."""
        if self.status < 0:
            return None
        raw = bytes(data[self.start :])
        if self.chunked:
            return dechunk(raw)
        if self.length >= 0:
            return raw[: self.length] if len(raw) >= self.length else None
        return raw


def dechunk(raw: bytes) -> bytes | None:
    out = bytearray()
    pos = 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = raw[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return None
        if size == 0:
            return bytes(out)
        start = eol + 2
        if start + size > len(raw):
            return None
        out += raw[start : start + size]
        pos = start + size + 2


def describe(exc: OSError, doing: str) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out " + doing if doing else "timed out"
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


# -- output and main ----------------------------------------------------------------------


def emit(data: bytes) -> None:
    """``data`` on stdout, newline-terminated."""
    if not data.endswith(b"\n"):
        data += b"\n"
    stdout = sys.stdout
    if stdout is None:
        return
    try:
        stdout.flush()
        stdout.buffer.write(data)
        stdout.buffer.flush()
    except (OSError, ValueError):
        pass


def answer(command: str, status: int, body: bytes) -> int:
    """Print the gateway's answer; the exit code for its status."""
    if status == 202:
        code = EXIT_PENDING if command == "al-subagent-wait" else EXIT_OTHER
    else:
        code = STATUS_EXIT.get(status, EXIT_OTHER)
    stripped = body.strip()
    if not stripped.startswith(b"{") and not stripped.startswith(b"["):
        text = stripped.decode("utf-8", "replace")[:500]
        what = "no body" if not text else "a body that is not JSON: " + text
        return fail(command, f"the gateway answered HTTP {status} with {what}", code or EXIT_OTHER)
    emit(body)
    return code


def fail(command: str, message: str, code: int) -> int:
    """Print a client-side failure as one line of JSON; returns ``code``."""
    emit(error_json(command, message).encode("utf-8", "replace"))
    return code


def main(command: str, argv: list[str]) -> int:
    """Run one command (``command`` is its name, ``argv`` its arguments); the exit code."""
    if command == "setenv":
        return setenv(argv)
    handler = HANDLERS.get(command)
    if handler is None:
        return fail(command, "unknown corral command " + repr(command), EXIT_USAGE)
    try:
        method, path, body, timeout = handler(argv)
        url = getenv("GATEWAY_URL")
        if not url:
            raise Failure(
                EXIT_UNAVAILABLE,
                "GATEWAY_URL is not set: corral's in-run commands only work inside a corral run",
            )
        status, data = Gateway(url).request(method, path, body, timeout)
    except Usage:
        return fail(command, "usage: " + USAGE[command], EXIT_USAGE)
    except Failure as failure:
        return fail(command, failure.message, failure.code)
    except KeyboardInterrupt:
        return fail(command, "interrupted", 130)
    return answer(command, status, data)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.stderr.write("usage: client.py <command> [args ...]\n")
        sys.exit(EXIT_USAGE)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
