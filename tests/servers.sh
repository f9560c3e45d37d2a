#!/bin/bash
# Private RabbitMQ and MariaDB servers on loopback, in a directory of our own: no systemd, no
# Docker, no system-wide state. Used by the test suite, the demo and the benchmarks.
#
# usage: tests/servers.sh COMMAND [all|rabbitmq|mariadb]
#   start    fresh servers (wipes their directories first); returns when they accept clients
#   resume   start again on the existing data (after stop or kill)
#   stop     clean shutdown (SIGTERM), then only the PIDs recorded at start
#   kill     kill -9 (for fault tests)
#   status   what is running
#   env      shell lines: the URLs for lproc, and what rabbitmqctl needs to reach the node
#   ctl ARGS rabbitmqctl ARGS against the private node (e.g. ctl set_disk_free_limit 50MB)
#
# Knobs (environment): LPROC_SRV_DIR (default /tmp/lproc-servers-$UID), LPROC_PORT_BASE
# (default 25600; every port is BASE+n), LPROC_SRV_USER, LPROC_SRV_PASS, LPROC_SRV_DB,
# START_TIMEOUT (seconds).
#
# Pitfalls this script handles: Debian's /usr/sbin/rabbitmq* wrappers `su rabbitmq`, so the
# upstream scripts under /usr/lib/rabbitmq/bin are used; the node is named @localhost so the
# machine's host name does not matter; a private epmd on its own port runs in the foreground
# so its PID is ours; the Erlang cookie must be mode 400; mariadbd refuses to run as root
# without --user=root; zombies count as dead (kill -0 succeeds on them). Ports stay below the
# kernel's ephemeral range (32768-60999): a client connecting there to a server not yet
# listening can be given the very same port and connect to itself, and then hold the port the
# server wants; for the same reason the start-up ping goes through the Unix socket.
set -euo pipefail

BASE_DIR=${LPROC_SRV_DIR:-/tmp/lproc-servers-$(id -u)}
PB=${LPROC_PORT_BASE:-25600}
RMQ_PORT=$((PB + 2))
RMQ_DIST_PORT=$((PB + 3))
EPMD_PORT=$((PB + 4))
MDB_PORT=$((PB + 6))
RMQ_TLS_PORT=$((PB + 5))
RMQ_CTL_DIST_PORT=$((PB + 10))   # CLI tools use PB+10 .. PB+20
RMQ_NODE=lproc$PB@localhost
SRV_USER=${LPROC_SRV_USER:-lproc}
SRV_PASS=${LPROC_SRV_PASS:-lproc-test-secret}
SRV_DB=${LPROC_SRV_DB:-lproc}
RMQ_VHOST=lproc
START_TIMEOUT=${START_TIMEOUT:-60}

R=$BASE_DIR/rabbitmq
M=$BASE_DIR/mariadb
RMQ_BIN=/usr/lib/rabbitmq/bin

log() { printf '[servers %s] %s\n' "$(date +%T)" "$*" >&2; }
readpid() { if [ -s "$1" ]; then cat "$1"; fi; }
alive() {   # alive PID [COMM]
    local st
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }; [ "${st%% *}" != Z ] || return 1
    [ -z "${2:-}" ] || [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}
waitgone() { local i; for ((i = 0; i < $3 * 50; i++)); do alive "$1" "$2" || return 0; sleep 0.02; done; return 1; }
killpid() {   # killpid PID COMM [TIMEOUT] [SIGNAL]
    local p=${1:-} c=$2
    alive "$p" "$c" || return 0
    kill "-${4:-TERM}" "$p" 2>/dev/null || true
    waitgone "$p" "$c" "${3:-30}" && return 0
    log "PID $p ($c) ignored TERM, sending KILL"; kill -KILL "$p" 2>/dev/null || true
    waitgone "$p" "$c" 5 || true
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need() {
    local b
    for b in "$@"; do
        command -v "$b" >/dev/null 2>&1 || [ -x "$RMQ_BIN/$b" ] || {
            echo "servers: '$b' not found: run 'make deps' (as root) to install the servers" >&2; exit 1; }
    done
}

rmq_env() {
    cat <<EOF
export HOME=$R
export RABBITMQ_CONF_ENV_FILE=/dev/null
export RABBITMQ_CONFIG_FILE=$R/rabbitmq.conf
export RABBITMQ_ADVANCED_CONFIG_FILE=$R/advanced.config
export RABBITMQ_ENABLED_PLUGINS_FILE=$R/enabled_plugins
export RABBITMQ_NODENAME=$RMQ_NODE
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$RMQ_PORT
export RABBITMQ_DIST_PORT=$RMQ_DIST_PORT
export RABBITMQ_CTL_DIST_PORT_MIN=$RMQ_CTL_DIST_PORT
export RABBITMQ_CTL_DIST_PORT_MAX=$((RMQ_CTL_DIST_PORT + 10))
export RABBITMQ_MNESIA_BASE=$R/mnesia
export RABBITMQ_LOG_BASE=$R/log
export RABBITMQ_PID_FILE=$R/rabbit.pid
export RABBITMQ_PLUGINS_EXPAND_DIR=$R/plugins-expand
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT=$EPMD_PORT
export ERL_CRASH_DUMP=$R/erl_crash.dump
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false'
export RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false'
export PATH=$RMQ_BIN:\$PATH
EOF
}

# A private CA and a server certificate for localhost / 127.0.0.1, shared by both servers, so
# the TLS paths (amqps://, MySQL ssl-mode) are tested on loopback.
make_certs() {
    local C=$BASE_DIR/tls
    [ -f "$C/server.pem" ] && return 0
    mkdir -p "$C"
    (
        cd "$C" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=lproc test CA" -keyout ca.key -out ca.pem
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout server.key -out server.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile ext.cnf -out server.pem
        chmod 644 server.key
    ) > "$BASE_DIR/tls.log" 2>&1 || { log "making test certificates failed"; cat "$BASE_DIR/tls.log" >&2; return 1; }
}

rmq_configure() {   # fresh directory and configuration
    rm -rf "$R"; mkdir -p "$R/mnesia" "$R/log"
    make_certs || return 1
    cat > "$R/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$RMQ_PORT
default_vhost = $RMQ_VHOST
default_user = $SRV_USER
default_pass = $SRV_PASS
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*
loopback_users = none
log.console = false
log.file.level = warning
disk_free_limit.absolute = 50MB
listeners.ssl.1 = 127.0.0.1:$RMQ_TLS_PORT
ssl_options.cacertfile = $BASE_DIR/tls/ca.pem
ssl_options.certfile = $BASE_DIR/tls/server.pem
ssl_options.keyfile = $BASE_DIR/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
EOF
    echo '[].' > "$R/enabled_plugins"
    echo '[].' > "$R/advanced.config"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$R/.erlang.cookie"
    chmod 400 "$R/.erlang.cookie"
    rmq_env > "$R/env.sh"
}

rmq_launch() {   # non-blocking part of the start
    need epmd rabbitmq-server rabbitmqctl
    if alive "$(readpid "$R/rabbit.pid")" beam.smp; then log "rabbitmq already running"; return 0; fi
    local p i
    for p in "$RMQ_PORT" "$RMQ_TLS_PORT" "$RMQ_DIST_PORT" "$EPMD_PORT"; do
        # After a kill, the old node's helpers may hold a port for a moment.
        for ((i = 0; i < 250; i++)); do port_busy "$p" || break; sleep 0.04; done
        if port_busy "$p"; then
            echo "servers: port 127.0.0.1:$p is already in use; set LPROC_PORT_BASE to another value" >&2
            return 1
        fi
    done
    [ "${1:-fresh}" = fresh ] || [ ! -f "$R/env.sh" ] && rmq_configure
    . "$R/env.sh"
    ( cd "$R" && exec epmd -port "$EPMD_PORT" -address 127.0.0.1 ) > "$R/log/epmd.log" 2>&1 < /dev/null &
    echo $! > "$R/epmd.pid"
    for ((i = 0; i < 250; i++)); do port_busy "$EPMD_PORT" && break; sleep 0.02; done
    ( cd "$R" && exec "$RMQ_BIN/rabbitmq-server" ) > "$R/log/stdout.log" 2>&1 < /dev/null &
    echo $! > "$R/wrapper.pid"
}

rmq_wait() {
    . "$R/env.sh"
    if ! rabbitmqctl -q wait "$R/rabbit.pid" --timeout "$START_TIMEOUT" > "$R/log/wait.log" 2>&1; then
        log "rabbitmq failed to start; end of its logs:"
        tail -n 30 "$R/log/stdout.log" "$R/log/wait.log" >&2 || true
        rmq_stop; return 1
    fi
    log "rabbitmq ready on 127.0.0.1:$RMQ_PORT"
}

rmq_stop() {   # rmq_stop [SIGNAL]
    [ -f "$R/env.sh" ] || return 0
    killpid "$(readpid "$R/rabbit.pid")" beam.smp 30 "${1:-TERM}"
    killpid "$(readpid "$R/wrapper.pid")" rabbitmq-server 10 "${1:-TERM}"
    killpid "$(readpid "$R/epmd.pid")" epmd 5
    rm -f "$R/rabbit.pid" "$R/wrapper.pid" "$R/epmd.pid"
}

mdb_configure() {
    local useropt=
    [ "$(id -u)" = 0 ] && useropt=--user=root
    rm -rf "$M"; mkdir -p "$M"
    make_certs || return 1
    cat > "$M/my.cnf" <<EOF
[client]
socket = $M/mysqld.sock
port = $MDB_PORT
host = 127.0.0.1

[mariadbd]
datadir = $M/data
socket = $M/mysqld.sock
port = $MDB_PORT
bind-address = 127.0.0.1
pid-file = $M/mysqld.pid
log-error = $M/mysqld.err
skip-name-resolve
local-infile = 1
innodb-buffer-pool-size = 256M
innodb-log-file-size = 256M
max-allowed-packet = 64M
# io_uring (native AIO) has been seen to leave a freshly installed ibdata1 unreadable on these
# kernels ("header page consists of zero bytes"); the thread-based AIO is reliable.
innodb-use-native-aio = 0
# Clients under valgrind need many seconds for a TLS handshake; the default (10 s) resets them.
connect-timeout = 60
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
ssl-ca = $BASE_DIR/tls/ca.pem
ssl-cert = $BASE_DIR/tls/server.pem
ssl-key = $BASE_DIR/tls/server.key
EOF
    mariadb-install-db --defaults-file="$M/my.cnf" $useropt --auth-root-authentication-method=normal \
        --skip-test-db --skip-name-resolve > "$M/install-db.log" 2>&1 \
        || { log "mariadb-install-db failed:"; cat "$M/install-db.log" >&2; return 1; }
}

mdb_start() {   # mdb_start [fresh|resume]
    need mariadbd mariadb-install-db mariadb-admin mariadb
    if alive "$(readpid "$M/mariadbd.pid")" mariadbd; then log "mariadb already running"; return 0; fi
    local useropt= mode=${1:-fresh}
    [ "$(id -u)" = 0 ] && useropt=--user=root
    if port_busy "$MDB_PORT"; then
        echo "servers: port 127.0.0.1:$MDB_PORT is already in use; set LPROC_PORT_BASE to another value" >&2
        return 1
    fi
    if [ "$mode" = fresh ] || [ ! -f "$M/my.cnf" ]; then mdb_configure; mode=fresh; fi
    ( cd "$M" && exec mariadbd --defaults-file="$M/my.cnf" $useropt ) > "$M/stdout.log" 2>&1 < /dev/null &
    echo $! > "$M/mariadbd.pid"
    local i ok=
    for ((i = 0; i < START_TIMEOUT * 50; i++)); do
        if mariadb-admin --defaults-file="$M/my.cnf" --protocol=socket -uroot ping >/dev/null 2>&1; then ok=1; break; fi
        alive "$(readpid "$M/mariadbd.pid")" mariadbd || break
        sleep 0.02
    done
    if [ -z "$ok" ]; then
        mdb_stop
        if [ "$mode" = fresh ] && [ -z "${MDB_RETRIED:-}" ]; then
            log "mariadb failed to start; trying once more on a fresh data directory"
            MDB_RETRIED=1 mdb_start fresh; return
        fi
        log "mariadb failed to start; end of its log:"; tail -n 30 "$M/mysqld.err" "$M/stdout.log" >&2 || true
        return 1
    fi
    if [ "$mode" = fresh ] && ! mariadb --defaults-file="$M/my.cnf" -uroot <<EOF
CREATE DATABASE IF NOT EXISTS \`$SRV_DB\`;
CREATE USER '$SRV_USER'@'127.0.0.1' IDENTIFIED BY '$SRV_PASS';
CREATE USER '$SRV_USER'@'localhost' IDENTIFIED BY '$SRV_PASS';
GRANT ALL ON \`$SRV_DB\`.* TO '$SRV_USER'@'127.0.0.1';
GRANT ALL ON \`$SRV_DB\`.* TO '$SRV_USER'@'localhost';
GRANT ALL ON \`${SRV_DB}_test\`.* TO '$SRV_USER'@'127.0.0.1';
EOF
    then log "creating the database and user failed"; mdb_stop; return 1; fi
    log "mariadb ready on 127.0.0.1:$MDB_PORT"
}

mdb_stop() {   # mdb_stop [SIGNAL]
    [ -f "$M/my.cnf" ] || return 0
    killpid "$(readpid "$M/mariadbd.pid")" mariadbd 60 "${1:-TERM}"
    rm -f "$M/mariadbd.pid"
}

status() {
    local p
    p=$(readpid "$R/rabbit.pid"); if alive "$p" beam.smp; then echo "rabbitmq: running, pid $p, 127.0.0.1:$RMQ_PORT"; else echo "rabbitmq: stopped"; fi
    p=$(readpid "$M/mariadbd.pid"); if alive "$p" mariadbd; then echo "mariadb: running, pid $p, 127.0.0.1:$MDB_PORT"; else echo "mariadb: stopped"; fi
}

urls() {
    echo "export LPROC_AMQP_URL='amqp://$SRV_USER:$SRV_PASS@127.0.0.1:$RMQ_PORT/$RMQ_VHOST'"
    echo "export LPROC_MYSQL_URL='mysql://$SRV_USER:$SRV_PASS@127.0.0.1:$MDB_PORT/$SRV_DB'"
    echo "export LPROC_MYSQL_ROOT_CNF='$M/my.cnf'"
    echo "export LPROC_AMQPS_URL='amqps://$SRV_USER:$SRV_PASS@localhost:$RMQ_TLS_PORT/$RMQ_VHOST'"
    echo "export LPROC_TLS_CA='$BASE_DIR/tls/ca.pem'"
    echo "export LPROC_SRV_DIR='$BASE_DIR' LPROC_PORT_BASE='$PB'"
}

start_all() {   # start_all fresh|resume
    rmq_launch "$1" || return 1
    mdb_start "$1" || { rmq_stop; return 1; }
    rmq_wait || { mdb_stop; return 1; }
}

what=${2:-all}
case "${1:-}:$what" in
    start:all) start_all fresh ;;
    resume:all) start_all resume ;;
    start:rabbitmq) rmq_launch fresh && rmq_wait ;;
    resume:rabbitmq) rmq_launch resume && rmq_wait ;;
    start:mariadb) mdb_start fresh ;;
    resume:mariadb) mdb_start resume ;;
    stop:all) rc=0; rmq_stop || rc=1; mdb_stop || rc=1; exit $rc ;;
    stop:rabbitmq) rmq_stop ;;
    stop:mariadb) mdb_stop ;;
    kill:rabbitmq) rmq_stop KILL ;;
    kill:mariadb) mdb_stop KILL ;;
    kill:all) rmq_stop KILL; mdb_stop KILL ;;
    status:*) status ;;
    env:*) urls; rmq_env ;;
    ctl:*) shift; eval "$(rmq_env)"; exec rabbitmqctl "$@" ;;
    *) echo "usage: $0 start|resume|stop|kill|status|env [all|rabbitmq|mariadb] | ctl ARGS..." >&2; exit 2 ;;
esac
