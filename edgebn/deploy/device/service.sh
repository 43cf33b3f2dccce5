# The device side of `edgebn deploy --service`: the bundle's server as a systemd user unit.
# POSIX sh; sent over ssh as `sh -c SCRIPT service.sh ...` (edgebn/deploy/service.py).
#
#   service.sh probe DEST TRUST PYTHON        what the unit needs to know about this device
#   service.sh install DEST UNIT ADDRESS_JSON < unit file: install, (re)start, write DEST/service.json
#   service.sh where DEST                     DEST/service.json (exit 8 when there is none)
#   service.sh reload DEST                    SIGHUP the unit named in DEST/service.json (if systemd)
#   service.sh health DEST PYTHON RELEASE WAIT_S   poll GET /health (DEST/service.json says where)
#                                                  until it names RELEASE; print the last answer
#
# Exit codes: 7 no systemd user session, 8 no DEST/service.json, 9 /health did not name RELEASE
# in WAIT_S, 3 PYTHON not found.
set -eu

home() {  # a leading ~/ means the login's home
    case $1 in
        "~") printf '%s\n' "$HOME" ;;
        "~/"*) printf '%s/%s\n' "$HOME" "${1#\~/}" ;;
        *) printf '%s\n' "$1" ;;
    esac
}

systemd_user() {  # 0 when `systemctl --user` reaches a user manager; else its last line in $WHY
    if ! command -v systemctl >/dev/null 2>&1; then WHY="systemctl not found"; return 1; fi
    if ! WHY=$(systemctl --user show-environment 2>&1 >/dev/null); then
        WHY=$(printf '%s\n' "$WHY" | tail -n 1)
        WHY=${WHY:-"systemctl --user failed"}
        return 1
    fi
}

probe() {
    T=$(home "$1")
    PY=$(command -v "$2" 2>/dev/null) || { echo "$2 not found on the device" >&2; exit 3; }
    case $D in /*) ;; *) D="$HOME/$D" ;; esac
    case $T in /*) ;; *) T="$HOME/$T" ;; esac
    trusting=0
    if [ -e "$T" ] || [ -L "$T" ]; then trusting=1; fi
    if systemd_user; then systemd=ok; else systemd=$WHY; fi
    printf 'home=%s\ndest=%s\ntrust=%s\npython=%s\ntrusting=%s\nsystemd=%s\n' "$HOME" "$D" "$T" "$PY" "$trusting" "$systemd"
}

install() {
    UNIT=$1 ADDRESS=$2
    systemd_user || { echo "no systemd user session: $WHY" >&2; exit 7; }
    U="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
    mkdir -p "$U"
    cat > "$U/.$UNIT.tmp"
    changed=1
    if cmp -s "$U/.$UNIT.tmp" "$U/$UNIT"; then changed=0; rm -f "$U/.$UNIT.tmp"; else mv "$U/.$UNIT.tmp" "$U/$UNIT"; fi
    systemctl --user daemon-reload
    systemctl --user enable --quiet "$UNIT"
    if [ "$changed" = 1 ] || ! systemctl --user is-active --quiet "$UNIT"; then
        systemctl --user restart "$UNIT"
    else  # the same unit, running: the server follows current; SIGHUP makes it look now
        systemctl --user reload "$UNIT"
    fi
    linger=0  # without lingering, a user's units stop at logout and start at login, not at boot
    if loginctl enable-linger >/dev/null 2>&1; then linger=1; fi
    printf '%s\n' "$ADDRESS" > "$D/.service.json.$$"
    mv "$D/.service.json.$$" "$D/service.json"
    printf 'changed=%s\nlinger=%s\n' "$changed" "$linger"
}

where() {
    [ -f "$D/service.json" ] || { echo "no service in $D (no $D/service.json): deploy with --service first" >&2; exit 8; }
    printf 'service=%s\n' "$(head -n 1 "$D/service.json")"
}

reload() {
    where
    UNIT=$(sed -n 's/.*"unit": *"\([^"]*\)".*/\1/p' "$D/service.json")
    if [ -n "$UNIT" ] && systemd_user; then
        systemctl --user reload "$UNIT" && echo "reloaded=1" && return
    fi
    echo "reloaded=0"  # a server run by hand follows current on its own
}

health() {
    PY=$1 WANT=$2 WAIT=$3
    [ -f "$D/service.json" ] || { echo "no service in $D (no $D/service.json): deploy with --service first" >&2; exit 8; }
    exec "$PY" -I -c '
import http.client, json, socket, sys, time
path, want, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(path) as f:
    where = json.load(f)

class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(where["socket"])

def get():
    if "socket" in where:
        conn = Unix("localhost", timeout=5)
    else:
        host, _, port = where["listen"].rpartition(":")
        host = {"0.0.0.0": "127.0.0.1", "[::]": "::1"}.get(host, host.strip("[]"))
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()

end, last, why = time.monotonic() + wait, None, "no answer"
while True:
    try:
        last, why = get(), None
    except Exception as exc:
        why = "%s: %s" % (type(exc).__name__, exc)
    if last is not None and last.get("release") == want:
        print(json.dumps(last))
        sys.exit(0)
    if time.monotonic() > end:
        print(json.dumps(last))
        print(why or "/health names release %s" % last.get("release"), file=sys.stderr)
        sys.exit(9)
    time.sleep(0.2)
' "$D/service.json" "$WANT" "$WAIT"
}

command=$1 D=$(home "$2")
shift 2
case $command in
    probe) probe "$@" ;;
    install) install "$@" ;;
    where) where "$@" ;;
    reload) reload "$@" ;;
    health) health "$@" ;;
    *) echo "service.sh: unknown command $command" >&2; exit 2 ;;
esac
