/*
 * lua_amqp.c - lproc.amqp: an AMQP 0-9-1 client for RabbitMQ, on rabbitmq-c.
 *
 *   local amqp = require "lproc.amqp"
 *   amqp.version() -> "0.11.0"
 *   amqp.parse_url(url) -> {scheme=, user=, host=, port=, vhost=, tls=} | nil, err
 *   amqp.connect(url [, opts]) -> conn | nil, err
 *   amqp.null                  the AMQP "void" field value in headers and arguments
 *
 *   conn:exchange_declare(name, type [, opts]) / exchange_delete(name [, if_unused]) -> true
 *   conn:queue_declare(name [, opts]) -> name, message_count, consumer_count
 *   conn:queue_bind / queue_unbind(queue, exchange, key [, arguments]) -> true
 *   conn:queue_purge(queue) / queue_delete(queue [, opts]) -> message_count
 *   conn:confirm_select() -> true;  conn:publish(exchange, key, body [, props]) -> seqno | false
 *   conn:confirms([timeout=0]) -> upto, nacked
 *   conn:qos(prefetch [, global]) -> true;  conn:consume(queue [, opts]) -> consumer_tag
 *   conn:cancel(tag) -> true;  conn:receive([timeout]) -> msg | false
 *   conn:receive_batch(max [, timeout]) -> {msg...}   (no timeout: wait as long as it takes)
 *   conn:ack(tag [, multiple]) / nack(tag [, multiple [, requeue=true]])
 *   conn:reject(tag [, requeue=true]) -> true
 *   conn:close() -> true;  conn:is_open() -> bool;  conn:stats() -> {...};  tostring(conn)
 *
 * Field tables (headers, arguments): string <-> long string (any bytes), integer <-> signed
 * 64-bit, float <-> double, boolean <-> boolean, array (a table with keys 1..n, {} included)
 * <-> array, table with string keys <-> nested table, amqp.null <-> void. Received integers of
 * any width become integers, decimals become floats.
 *
 * A received message is a table: body, delivery_tag, redelivered, exchange, routing_key,
 * consumer_tag and each property that is set (message_id, content_type, content_encoding,
 * correlation_id, type, app_id, user_id, reply_to, expiration, priority, timestamp, headers,
 * persistent = delivery mode 2). Delivery tags are unique per connection.
 *
 * A connection uses one channel (1). Methods return nil, "amqp.<method>: why"[, reply code]
 * on operational failures and raise on misuse (wrong arguments, connection closed by close()).
 *
 * Channel errors (the broker closes the channel, e.g. PRECONDITION_FAILED): the method that
 * sees it returns nil, "amqp.<method>: <reply text>", <reply code>, and the channel is reopened
 * at once, so the connection stays usable; but what the old channel carried is gone: confirm
 * mode (publishes get seqno 0 until confirm_select() again; the seqnos still unconfirmed are
 * reported as nacked by the next confirms()), qos, consumers (consume() again) and unacked
 * deliveries (the broker requeues them; acking their tags returns an error).
 *
 * Connection loss (socket error, missed heartbeats, broker-initiated connection.close): the
 * method that sees it returns nil, "amqp.<method>: connection lost: why"; afterwards
 * is_open() is false and every method returns nil, "amqp.<method>: connection is closed".
 * Writes use MSG_NOSIGNAL (rabbitmq-c does so for TCP and for its OpenSSL BIO), so a dead
 * peer never raises SIGPIPE; the binding leaves the process's signal dispositions alone.
 *
 * Heartbeats are serviced inside the calls (publish, confirms, receive*, RPCs): a process
 * that makes no call for more than twice the heartbeat interval gets disconnected.
 */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "lproc.h"

#define CONN_MT "lproc.amqp.connection"
#define CHANNEL 1
#define MAX_DEPTH 64            /* nesting of header / argument tables */
#define ERR_SIZE 512

/* What the last failure was (conn.err_kind). */
enum { ERR_NONE, ERR_LOST, ERR_CHANNEL, ERR_CANCEL };

/* What pump() found. */
enum { EV_OK, EV_TIMEOUT, EV_MESSAGE, EV_OTHER, EV_ERROR };

/* A sorted set of seqnos. */
typedef struct seqset {
    uint64_t *v;
    size_t n, cap;
} seqset;

typedef struct conn {
    amqp_connection_state_t st; /* NULL once closed or lost */
    int closed;                 /* close() was called: any further use is a misuse */
    int ready;                  /* logged in: close() says goodbye to the broker */
    int confirm;                /* confirm mode is on on the current channel */
    uint64_t seq_last;          /* the last seqno handed out by publish() */
    uint64_t seq_base;          /* seqno = seq_base + the broker's delivery tag */
    uint64_t upto;              /* every seqno <= upto is acked or nacked */
    seqset done;                /* acked or nacked seqnos > upto + 1 (out of order) */
    seqset nacks;               /* seqnos nacked since the last confirms() */
    uint64_t tag_base;          /* delivery tag in Lua = tag_base + the broker's tag */
    uint64_t tag_max;           /* highest delivery tag handed to Lua */
    lua_Integer in_head, in_tail; /* the inbox (user value 1): messages read by confirms() */
    int in_stale;               /* the inbox holds messages of a dead channel: drop them */
    uint64_t published, acked, nacked, returned, received;
    int err_kind;               /* ERR_*: the last failure */
    int err_code;               /* its AMQP reply code, 0 when none */
    int err_deferred;           /* a consumer cancel still to be reported by receive*() */
    int blocked;                /* the broker blocks publishing (connection.blocked) */
    char blocked_why[128];      /* its reason, e.g. "low on disk" */
    size_t err_len;
    char err[ERR_SIZE];
    amqp_pool_t pool;           /* scratch memory for outgoing field tables */
} conn;

/* The properties that are short strings, in the order a received message lists them. */
static const struct {
    const char *name;
    amqp_flags_t flag;
    size_t off;
} strprops[] = {
    {"content_type", AMQP_BASIC_CONTENT_TYPE_FLAG,
     offsetof(amqp_basic_properties_t, content_type)},
    {"content_encoding", AMQP_BASIC_CONTENT_ENCODING_FLAG,
     offsetof(amqp_basic_properties_t, content_encoding)},
    {"correlation_id", AMQP_BASIC_CORRELATION_ID_FLAG,
     offsetof(amqp_basic_properties_t, correlation_id)},
    {"reply_to", AMQP_BASIC_REPLY_TO_FLAG, offsetof(amqp_basic_properties_t, reply_to)},
    {"expiration", AMQP_BASIC_EXPIRATION_FLAG, offsetof(amqp_basic_properties_t, expiration)},
    {"message_id", AMQP_BASIC_MESSAGE_ID_FLAG, offsetof(amqp_basic_properties_t, message_id)},
    {"type", AMQP_BASIC_TYPE_FLAG, offsetof(amqp_basic_properties_t, type)},
    {"user_id", AMQP_BASIC_USER_ID_FLAG, offsetof(amqp_basic_properties_t, user_id)},
    {"app_id", AMQP_BASIC_APP_ID_FLAG, offsetof(amqp_basic_properties_t, app_id)},
};
#define NSTRPROPS (sizeof strprops / sizeof strprops[0])

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

/* Seconds on a monotonic clock. */
static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The time left until deadline into *tv, or NULL (wait forever) when deadline is infinite. */
static struct timeval *time_left(double deadline, struct timeval *tv)
{
    double left;
    if (isinf(deadline))
        return NULL;
    left = deadline - now_mono();
    if (left < 0)
        left = 0;
    tv->tv_sec = (time_t)left;
    tv->tv_usec = (long)((left - (double)tv->tv_sec) * 1e6);
    return tv;
}

/* Optional timeout in seconds at arg: def when absent (HUGE_VAL = forever); returns the
 * deadline. Raises unless it is a non-negative number. */
static double opt_deadline(lua_State *L, int arg, double def)
{
    double t = def;
    if (!lua_isnoneornil(L, arg)) {
        t = (double)luaL_checknumber(L, arg);
        luaL_argcheck(L, t >= 0 && t <= 1e9, arg, "timeout must be 0..1e9 seconds");
    }
    return isinf(t) ? t : now_mono() + t;
}

/* strerror(e) with a lower-case first letter into buf. */
static const char *errno_text(int e, char *buf, size_t size)
{
    if (strerror_r(e, buf, size) != 0)
        snprintf(buf, size, "error %d", e);
    if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
        buf[0] = (char)(buf[0] - 'A' + 'a');
    return buf;
}

/* Optional boolean argument. */
static int opt_bool_arg(lua_State *L, int arg, int def)
{
    if (lua_isnoneornil(L, arg))
        return def;
    luaL_checktype(L, arg, LUA_TBOOLEAN);
    return lua_toboolean(L, arg);
}

/* A string argument that must fit an AMQP short string (255 bytes). */
static amqp_bytes_t check_shortstr(lua_State *L, int arg)
{
    amqp_bytes_t b;
    b.bytes = (void *)luaL_checklstring(L, arg, &b.len);
    luaL_argcheck(L, b.len <= 255, arg, "longer than 255 bytes");
    return b;
}

/* Raises unless every key of the options table at idx is one of names (NULL-terminated). */
static void check_opt_names(lua_State *L, int idx, const char *const names[], const char *fn)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k;
        int i;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "amqp.%s: option names must be strings", fn);
        k = lua_tostring(L, -1);
        for (i = 0; names[i] != NULL && strcmp(names[i], k) != 0; i++)
            ;
        if (names[i] == NULL)
            luaL_error(L, "amqp.%s: unknown option '%s'", fn, k);
    }
}

/* Boolean option name of the table at idx (def when absent). */
static int opt_bool(lua_State *L, int idx, const char *name, int def, const char *fn)
{
    int r = def;
    int t = lua_getfield(L, idx, name);
    if (t == LUA_TBOOLEAN)
        r = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        luaL_error(L, "amqp.%s: option '%s' must be a boolean", fn, name);
    lua_pop(L, 1);
    return r;
}

/* Integer option name of the table at idx, in min..max (def when absent). */
static lua_Integer opt_int(lua_State *L, int idx, const char *name, lua_Integer def,
                           lua_Integer min, lua_Integer max, const char *fn)
{
    lua_Integer r = def;
    int isint = 0;
    if (lua_getfield(L, idx, name) != LUA_TNIL) {
        r = lua_tointegerx(L, -1, &isint);
        if (!isint || lua_type(L, -1) != LUA_TNUMBER || r < min || r > max)
            luaL_error(L, "amqp.%s: option '%s' must be an integer in %I..%I", fn, name,
                       min, max);
    }
    lua_pop(L, 1);
    return r;
}

/* Number option name of the table at idx, in min..max (def when absent). */
static double opt_num(lua_State *L, int idx, const char *name, double def, double min,
                      double max, const char *fn)
{
    double r = def;
    if (lua_getfield(L, idx, name) != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "amqp.%s: option '%s' must be a number", fn, name);
        r = (double)lua_tonumber(L, -1);
        if (!(r >= min && r <= max))
            luaL_error(L, "amqp.%s: option '%s' must be in %f..%f", fn, name, min, max);
    }
    lua_pop(L, 1);
    return r;
}

/* String option name of the table at idx without NUL bytes, or NULL when absent. The string
 * stays referenced by the table. */
static const char *opt_cstr(lua_State *L, int idx, const char *name, const char *fn)
{
    const char *s = NULL;
    size_t len;
    int t = lua_getfield(L, idx, name);
    if (t == LUA_TSTRING) {
        s = lua_tolstring(L, -1, &len);
        if (strlen(s) != len)
            luaL_error(L, "amqp.%s: option '%s' contains a NUL byte", fn, name);
    } else if (t != LUA_TNIL) {
        luaL_error(L, "amqp.%s: option '%s' must be a string", fn, name);
    }
    lua_pop(L, 1);
    return s;
}

/* ------------------------------------------------------------------------------------------ */
/* Seqno sets                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Index of the first element >= x. */
static size_t seqset_lower(const seqset *s, uint64_t x)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->v[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Whether x is in s. */
static int seqset_has(const seqset *s, uint64_t x)
{
    size_t i = seqset_lower(s, x);
    return i < s->n && s->v[i] == x;
}

/* Adds x (absent) at its place; returns 0, or -1 when out of memory. */
static int seqset_add(seqset *s, uint64_t x)
{
    size_t i;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        uint64_t *v = realloc(s->v, cap * sizeof *v);
        if (v == NULL)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    i = seqset_lower(s, x);
    memmove(s->v + i + 1, s->v + i, (s->n - i) * sizeof *s->v);
    s->v[i] = x;
    s->n++;
    return 0;
}

/* Removes the first k elements. */
static void seqset_shift(seqset *s, size_t k)
{
    if (k == 0)
        return;
    memmove(s->v, s->v + k, (s->n - k) * sizeof *s->v);
    s->n -= k;
}

/* Frees the set's memory. */
static void seqset_free(seqset *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Failures                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* Records a failure: prefix then len bytes of foreign text (truncated to fit). */
static void set_err(conn *c, int kind, int code, const char *prefix, const void *text,
                    size_t len)
{
    size_t n = strlen(prefix);
    if (n > sizeof c->err)
        n = sizeof c->err;
    memcpy(c->err, prefix, n);
    if (len > sizeof c->err - n)
        len = sizeof c->err - n;
    if (len > 0)
        memcpy(c->err + n, text, len);
    c->err_len = n + len;
    c->err_kind = kind;
    c->err_code = code;
}

/* Frees the library's connection (no protocol exchange) and forgets the inbox. */
static void drop(conn *c)
{
    if (c->st != NULL) {
        amqp_destroy_connection(c->st);
        c->st = NULL;
    }
    c->in_stale = 1;
}

/* Text for a rabbitmq-c status (sys_errno: errno right after the failing call). */
static const char *status_text(int status, int sys_errno, char *buf, size_t size)
{
    switch (status) {
    case AMQP_STATUS_CONNECTION_CLOSED:
        return "the broker closed the socket";
    case AMQP_STATUS_HEARTBEAT_TIMEOUT:
        return "no heartbeat from the broker";
    case AMQP_STATUS_SOCKET_ERROR:
        if (sys_errno != 0 && sys_errno != EAGAIN && sys_errno != EINPROGRESS)
            return errno_text(sys_errno, buf, size);
        return "socket error";
    default:
        return amqp_error_string2(status);
    }
}

/* The connection is unusable (status from the library): records why and drops it. */
static int conn_lost(conn *c, int status, int sys_errno)
{
    char buf[128];
    const char *why = status_text(status, sys_errno, buf, sizeof buf);
    set_err(c, ERR_LOST, 0, "connection lost: ", why, strlen(why));
    drop(c);
    return EV_ERROR;
}

/* The broker sent something this client cannot make sense of: drops the connection. */
static int protocol_error(conn *c, const char *what)
{
    set_err(c, ERR_LOST, 0, "connection lost: protocol error: ", what, strlen(what));
    drop(c);
    return EV_ERROR;
}

/* The broker closed the connection (m): answers close-ok and drops it. */
static int conn_closed_by_broker(conn *c, const amqp_connection_close_t *m)
{
    amqp_connection_close_ok_t ok = {0};
    set_err(c, ERR_LOST, m->reply_code, "connection lost: ", m->reply_text.bytes,
            m->reply_text.len);
    amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    drop(c);
    return EV_ERROR;
}

/* Pushes nil, "amqp.<fn>: <last failure>"[, reply code]; returns the number of values. */
static int failure(lua_State *L, conn *c, const char *fn)
{
    lua_pushnil(L);
    lua_pushfstring(L, "amqp.%s: ", fn);
    lua_pushlstring(L, c->err, c->err_len);
    lua_concat(L, 2);
    if (c->err_code != 0) {
        lua_pushinteger(L, c->err_code);
        return 3;
    }
    return 2;
}

/* nil, "amqp.<fn>: connection is closed": the result of any method once the connection is lost. */
static int closed_result(lua_State *L, const char *fn)
{
    lua_pushnil(L);
    lua_pushfstring(L, "amqp.%s: connection is closed", fn);
    return 2;
}

/* The connection at index 1 for method fn; raises when close() was called on it. */
static conn *checkconn(lua_State *L, const char *fn)
{
    conn *c = (conn *)luaL_checkudata(L, 1, CONN_MT);
    if (c->closed)
        luaL_error(L, "amqp.%s: connection is closed", fn);
    return c;
}

/* ------------------------------------------------------------------------------------------ */
/* Field tables: Lua -> AMQP (into the connection's scratch pool)                             */
/* ------------------------------------------------------------------------------------------ */

static void to_table(lua_State *L, conn *c, int idx, amqp_table_t *t, int depth,
                     const char *fn);
static void to_array(lua_State *L, conn *c, int idx, lua_Integer n, amqp_array_t *a, int depth,
                     const char *fn);

/* Memory from the scratch pool; raises when out of memory. */
static void *scratch(lua_State *L, conn *c, size_t size)
{
    void *p = amqp_pool_alloc(&c->pool, size ? size : 1);
    if (p == NULL)
        luaL_error(L, "not enough memory");
    return p;
}

/* Encodes the Lua value at idx into *v. */
static void to_value(lua_State *L, conn *c, int idx, amqp_field_value_t *v, int depth,
                     const char *fn)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        v->kind = AMQP_FIELD_KIND_UTF8;
        v->value.bytes.bytes = (void *)lua_tolstring(L, idx, &v->value.bytes.len);
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            v->kind = AMQP_FIELD_KIND_I64;
            v->value.i64 = (int64_t)lua_tointeger(L, idx);
        } else {
            v->kind = AMQP_FIELD_KIND_F64;
            v->value.f64 = (double)lua_tonumber(L, idx);
        }
        break;
    case LUA_TBOOLEAN:
        v->kind = AMQP_FIELD_KIND_BOOLEAN;
        v->value.boolean = (amqp_boolean_t)lua_toboolean(L, idx);
        break;
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) != NULL)
            luaL_error(L, "amqp.%s: field values cannot be light userdata", fn);
        v->kind = AMQP_FIELD_KIND_VOID;
        break;
    case LUA_TTABLE: {
        lua_Integer n = 0, len = (lua_Integer)lua_rawlen(L, idx);
        if (depth >= MAX_DEPTH)
            luaL_error(L, "amqp.%s: tables nested deeper than %d levels", fn, MAX_DEPTH);
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1);
            n++;
        }
        if (n == len) {
            v->kind = AMQP_FIELD_KIND_ARRAY;
            to_array(L, c, idx, n, &v->value.array, depth + 1, fn);
        } else {
            v->kind = AMQP_FIELD_KIND_TABLE;
            to_table(L, c, idx, &v->value.table, depth + 1, fn);
        }
        break;
    }
    default:
        luaL_error(L, "amqp.%s: a field value cannot be a %s", fn, luaL_typename(L, idx));
    }
}

/* Encodes the sequence t[1..n] at idx into *a. */
static void to_array(lua_State *L, conn *c, int idx, lua_Integer n, amqp_array_t *a, int depth,
                     const char *fn)
{
    lua_Integer i;
    if (n > INT32_MAX / 2)
        luaL_error(L, "amqp.%s: array too large", fn);
    luaL_checkstack(L, 4, "amqp: nested tables");
    a->num_entries = (int)n;
    a->entries = scratch(L, c, (size_t)n * sizeof *a->entries);
    for (i = 1; i <= n; i++) {
        if (lua_rawgeti(L, idx, i) == LUA_TNIL)
            luaL_error(L, "amqp.%s: tables must be arrays or have only string keys", fn);
        to_value(L, c, lua_gettop(L), &a->entries[i - 1], depth, fn);
        lua_pop(L, 1); /* the value stays referenced by the table */
    }
}

/* Encodes the table at idx (string keys) into *t. */
static void to_table(lua_State *L, conn *c, int idx, amqp_table_t *t, int depth,
                     const char *fn)
{
    int n = 0, i = 0;
    idx = lua_absindex(L, idx);
    luaL_checkstack(L, 4, "amqp: nested tables");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "amqp.%s: tables must be arrays or have only string keys", fn);
        if (++n > INT32_MAX / 2)
            luaL_error(L, "amqp.%s: table too large", fn);
    }
    t->num_entries = n;
    t->entries = scratch(L, c, (size_t)n * sizeof *t->entries);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        amqp_table_entry_t *e = &t->entries[i++];
        e->key.bytes = (void *)lua_tolstring(L, -2, &e->key.len);
        if (e->key.len > 255)
            luaL_error(L, "amqp.%s: table key longer than 255 bytes", fn);
        to_value(L, c, lua_gettop(L), &e->value, depth, fn);
        lua_pop(L, 1);
    }
}

/* Optional field table argument at arg (nil or absent: empty). */
static amqp_table_t opt_table_arg(lua_State *L, conn *c, int arg, const char *fn)
{
    amqp_table_t t = amqp_empty_table;
    if (!lua_isnoneornil(L, arg)) {
        luaL_checktype(L, arg, LUA_TTABLE);
        to_table(L, c, arg, &t, 0, fn);
    }
    return t;
}

/* Optional field table option "arguments" of the options table at idx. */
static amqp_table_t opt_table(lua_State *L, conn *c, int idx, const char *fn)
{
    amqp_table_t t = amqp_empty_table;
    int ty = lua_getfield(L, idx, "arguments");
    if (ty == LUA_TTABLE)
        to_table(L, c, lua_gettop(L), &t, 0, fn);
    else if (ty != LUA_TNIL)
        luaL_error(L, "amqp.%s: option 'arguments' must be a table", fn);
    lua_pop(L, 1); /* the table stays referenced by the options */
    return t;
}

/* ------------------------------------------------------------------------------------------ */
/* Field tables: AMQP -> Lua                                                                  */
/* ------------------------------------------------------------------------------------------ */

static void push_table(lua_State *L, const amqp_table_t *t, int depth, const char *fn);

/* Pushes an AMQP field value. */
static void push_value(lua_State *L, const amqp_field_value_t *v, int depth, const char *fn)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: lua_pushboolean(L, v->value.boolean); break;
    case AMQP_FIELD_KIND_I8: lua_pushinteger(L, v->value.i8); break;
    case AMQP_FIELD_KIND_U8: lua_pushinteger(L, v->value.u8); break;
    case AMQP_FIELD_KIND_I16: lua_pushinteger(L, v->value.i16); break;
    case AMQP_FIELD_KIND_U16: lua_pushinteger(L, v->value.u16); break;
    case AMQP_FIELD_KIND_I32: lua_pushinteger(L, v->value.i32); break;
    case AMQP_FIELD_KIND_U32: lua_pushinteger(L, (lua_Integer)v->value.u32); break;
    case AMQP_FIELD_KIND_I64: lua_pushinteger(L, (lua_Integer)v->value.i64); break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        if (v->value.u64 <= (uint64_t)LUA_MAXINTEGER)
            lua_pushinteger(L, (lua_Integer)v->value.u64);
        else
            lua_pushnumber(L, (lua_Number)v->value.u64);
        break;
    case AMQP_FIELD_KIND_F32: lua_pushnumber(L, (lua_Number)v->value.f32); break;
    case AMQP_FIELD_KIND_F64: lua_pushnumber(L, (lua_Number)v->value.f64); break;
    case AMQP_FIELD_KIND_DECIMAL:
        lua_pushnumber(L, (lua_Number)v->value.decimal.value
                              / pow(10.0, (double)v->value.decimal.decimals));
        break;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        lua_pushlstring(L, v->value.bytes.bytes, v->value.bytes.len);
        break;
    case AMQP_FIELD_KIND_ARRAY: {
        int i;
        if (depth >= MAX_DEPTH)
            luaL_error(L, "amqp.%s: tables nested deeper than %d levels", fn, MAX_DEPTH);
        luaL_checkstack(L, 4, "amqp: nested tables");
        lua_createtable(L, v->value.array.num_entries, 0);
        for (i = 0; i < v->value.array.num_entries; i++) {
            push_value(L, &v->value.array.entries[i], depth + 1, fn);
            lua_rawseti(L, -2, i + 1);
        }
        break;
    }
    case AMQP_FIELD_KIND_TABLE:
        if (depth >= MAX_DEPTH)
            luaL_error(L, "amqp.%s: tables nested deeper than %d levels", fn, MAX_DEPTH);
        push_table(L, &v->value.table, depth + 1, fn);
        break;
    default: /* AMQP_FIELD_KIND_VOID */
        lua_pushlightuserdata(L, NULL);
        break;
    }
}

/* Pushes an AMQP field table as a Lua table. */
static void push_table(lua_State *L, const amqp_table_t *t, int depth, const char *fn)
{
    int i;
    luaL_checkstack(L, 4, "amqp: nested tables");
    lua_createtable(L, 0, t->num_entries);
    for (i = 0; i < t->num_entries; i++) {
        lua_pushlstring(L, t->entries[i].key.bytes, t->entries[i].key.len);
        push_value(L, &t->entries[i].value, depth, fn);
        lua_rawset(L, -3);
    }
}

/* Sets the properties p that are present as fields of the table on top of the stack. */
static void set_props(lua_State *L, const amqp_basic_properties_t *p, const char *fn)
{
    size_t i;
    for (i = 0; i < NSTRPROPS; i++) {
        if (p->_flags & strprops[i].flag) {
            const amqp_bytes_t *b = (const amqp_bytes_t *)((const char *)p + strprops[i].off);
            lua_pushlstring(L, b->bytes, b->len);
            lua_setfield(L, -2, strprops[i].name);
        }
    }
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) {
        lua_pushboolean(L, p->delivery_mode == 2);
        lua_setfield(L, -2, "persistent");
    }
    if (p->_flags & AMQP_BASIC_PRIORITY_FLAG) {
        lua_pushinteger(L, p->priority);
        lua_setfield(L, -2, "priority");
    }
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) {
        lua_pushinteger(L, (lua_Integer)p->timestamp);
        lua_setfield(L, -2, "timestamp");
    }
    if (p->_flags & AMQP_BASIC_HEADERS_FLAG) {
        push_table(L, &p->headers, 0, fn);
        lua_setfield(L, -2, "headers");
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Incoming frames                                                                            */
/* ------------------------------------------------------------------------------------------ */

/* A basic.ack (nack = 0) or basic.nack (nack = 1) for the broker's tag btag. */
static void on_confirm(conn *c, uint64_t btag, int multiple, int nack)
{
    uint64_t s, x;
    size_t k;
    if (!c->confirm)
        return; /* not for this channel: ignore */
    s = (btag == 0 && multiple) ? c->seq_last : c->seq_base + btag;
    if (s > c->seq_last)
        s = c->seq_last; /* confirms something never published: clamp */
    if (s <= c->upto)
        return; /* already known */
    if (multiple) {
        size_t j = 0;
        for (k = 0; k < c->done.n && c->done.v[k] <= s; k++)
            ;
        if (nack) {
            for (x = c->upto + 1; x <= s; x++) {
                if (j < k && c->done.v[j] == x)
                    j++;
                else if (seqset_add(&c->nacks, x) != 0)
                    break; /* out of memory: counted, not listed */
            }
        }
        if (nack)
            c->nacked += (s - c->upto) - k;
        else
            c->acked += (s - c->upto) - k;
        seqset_shift(&c->done, k);
        c->upto = s;
    } else {
        if (s == c->upto + 1) {
            c->upto = s;
        } else {
            if (seqset_has(&c->done, s))
                return;
            if (seqset_add(&c->done, s) != 0)
                return; /* out of memory: a later multiple confirm will cover it */
        }
        if (nack) {
            c->nacked++;
            seqset_add(&c->nacks, s);
        } else {
            c->acked++;
        }
    }
    for (k = 0; k < c->done.n && c->done.v[k] == c->upto + 1 + k; k++)
        ;
    if (k > 0) {
        c->upto += k;
        seqset_shift(&c->done, k);
    }
}

/* A method frame on channel 0 (connection class): returns EV_ERROR for connection.close;
 * connection.blocked / unblocked set and clear c->blocked. */
static int on_channel0(conn *c, const amqp_frame_t *f)
{
    if (f->frame_type == AMQP_FRAME_METHOD) {
        if (f->payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)
            return conn_closed_by_broker(c, f->payload.method.decoded);
        if (f->payload.method.id == AMQP_CONNECTION_BLOCKED_METHOD) {
            const amqp_bytes_t *why = &((const amqp_connection_blocked_t *)f->payload.method.decoded)->reason;
            size_t n = why->len < sizeof c->blocked_why - 1 ? why->len : sizeof c->blocked_why - 1;
            memcpy(c->blocked_why, why->bytes, n);
            c->blocked_why[n] = '\0';
            c->blocked = 1;
        } else if (f->payload.method.id == AMQP_CONNECTION_UNBLOCKED_METHOD) {
            c->blocked = 0;
        }
    }
    amqp_maybe_release_buffers_on_channel(c->st, 0);
    return EV_OTHER;
}

/* The broker closed the channel (m): answers close-ok, settles what the old channel carried
 * (queued confirms are applied, queued deliveries dropped, unconfirmed seqnos nacked) and
 * reopens it. Returns EV_ERROR with the broker's reason recorded. */
static int channel_reset(conn *c, const amqp_channel_close_t *m)
{
    amqp_channel_close_ok_t ok = {0};
    amqp_frame_t f;
    amqp_rpc_reply_t r;
    int rc;

    set_err(c, ERR_CHANNEL, m->reply_code, "", m->reply_text.bytes, m->reply_text.len);
    errno = 0;
    rc = amqp_send_method(c->st, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    if (rc != AMQP_STATUS_OK)
        return conn_lost(c, rc, errno);
    while (amqp_frames_enqueued(c->st)) {
        rc = amqp_simple_wait_frame(c->st, &f);
        if (rc != AMQP_STATUS_OK)
            return conn_lost(c, rc, errno);
        if (f.channel == 0) {
            if (on_channel0(c, &f) == EV_ERROR)
                return EV_ERROR;
        } else if (f.channel == CHANNEL && f.frame_type == AMQP_FRAME_METHOD) {
            const void *d = f.payload.method.decoded;
            if (f.payload.method.id == AMQP_BASIC_ACK_METHOD)
                on_confirm(c, ((const amqp_basic_ack_t *)d)->delivery_tag,
                           ((const amqp_basic_ack_t *)d)->multiple, 0);
            else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD)
                on_confirm(c, ((const amqp_basic_nack_t *)d)->delivery_tag,
                           ((const amqp_basic_nack_t *)d)->multiple, 1);
            else if (f.payload.method.id == AMQP_BASIC_RETURN_METHOD)
                c->returned++;
        }
    }
    if (c->confirm && c->upto < c->seq_last)
        on_confirm(c, c->seq_last - c->seq_base, 1, 1);
    c->confirm = 0;
    c->tag_base = c->tag_max;
    c->in_stale = 1;
    errno = 0;
    if (amqp_channel_open(c->st, CHANNEL) == NULL) {
        r = amqp_get_rpc_reply(c->st);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
            return conn_lost(c, r.library_error, errno);
        if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION
            && r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
            return conn_closed_by_broker(c, r.reply.decoded);
        return protocol_error(c, "cannot reopen the channel");
    }
    amqp_maybe_release_buffers(c->st);
    return EV_ERROR;
}

/* Handles the failure of the RPC just made (the library's last reply): a channel reset or a
 * lost connection. Returns EV_ERROR. */
static int rpc_failed(conn *c, int sys_errno)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c->st);
    switch (r.reply_type) {
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
            return channel_reset(c, r.reply.decoded);
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
            return conn_closed_by_broker(c, r.reply.decoded);
        return protocol_error(c, "unexpected reply");
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        return conn_lost(c, r.library_error, sys_errno);
    default:
        return protocol_error(c, "no reply");
    }
}

/* Waits (no timeout: heartbeats guard it) for the next content frame of channel 1, handling
 * what may legally come between. */
static int next_content_frame(conn *c, amqp_frame_t *f)
{
    for (;;) {
        int rc;
        errno = 0;
        rc = amqp_simple_wait_frame_noblock(c->st, f, NULL);
        if (rc != AMQP_STATUS_OK)
            return conn_lost(c, rc, errno);
        if (f->channel == 0) {
            if (on_channel0(c, f) == EV_ERROR)
                return EV_ERROR;
            continue;
        }
        if (f->channel != CHANNEL)
            continue;
        if (f->frame_type == AMQP_FRAME_METHOD) {
            const void *d = f->payload.method.decoded;
            if (f->payload.method.id == AMQP_BASIC_ACK_METHOD)
                on_confirm(c, ((const amqp_basic_ack_t *)d)->delivery_tag,
                           ((const amqp_basic_ack_t *)d)->multiple, 0);
            else if (f->payload.method.id == AMQP_BASIC_NACK_METHOD)
                on_confirm(c, ((const amqp_basic_nack_t *)d)->delivery_tag,
                           ((const amqp_basic_nack_t *)d)->multiple, 1);
            else
                return protocol_error(c, "a method frame inside a message");
            continue;
        }
        return EV_OK;
    }
}

/* Reads the header and body frames of the message whose method frame was just read. When
 * keep, sets its properties and body in the table on top of the stack; otherwise discards
 * them. Returns EV_OK or EV_ERROR (then the stack may hold garbage above the table). */
static int read_content(lua_State *L, conn *c, int keep, const char *fn)
{
    amqp_frame_t f;
    uint64_t size, got = 0;
    luaL_Buffer b;
    int buffered = 0;

    if (next_content_frame(c, &f) != EV_OK)
        return EV_ERROR;
    if (f.frame_type != AMQP_FRAME_HEADER)
        return protocol_error(c, "expected a content header");
    size = f.payload.properties.body_size;
    if (keep)
        set_props(L, f.payload.properties.decoded, fn);
    while (got < size) {
        amqp_bytes_t frag;
        if (next_content_frame(c, &f) != EV_OK)
            return EV_ERROR;
        if (f.frame_type != AMQP_FRAME_BODY)
            return protocol_error(c, "expected a content body");
        frag = f.payload.body_fragment;
        if (frag.len > size - got)
            return protocol_error(c, "message body larger than announced");
        if (keep) {
            if (got == 0 && frag.len == size) {
                lua_pushlstring(L, frag.bytes, frag.len); /* the usual case: one frame */
            } else {
                if (!buffered) {
                    if (size > (uint64_t)(SIZE_MAX / 2))
                        return protocol_error(c, "message body too large");
                    luaL_buffinitsize(L, &b, (size_t)size);
                    buffered = 1;
                }
                luaL_addlstring(&b, frag.bytes, frag.len);
            }
        }
        got += frag.len;
        amqp_maybe_release_buffers_on_channel(c->st, CHANNEL);
    }
    if (keep) {
        if (buffered)
            luaL_pushresult(&b);
        else if (size == 0)
            lua_pushliteral(L, "");
        lua_setfield(L, -2, "body");
    }
    return EV_OK;
}

/* A basic.deliver (d): pushes the whole message as a table. Returns EV_MESSAGE or EV_ERROR
 * (nothing pushed). */
static int on_deliver(lua_State *L, conn *c, const amqp_basic_deliver_t *d, const char *fn)
{
    int top = lua_gettop(L);
    uint64_t tag = c->tag_base + d->delivery_tag;
    lua_createtable(L, 0, 10);
    lua_pushinteger(L, (lua_Integer)tag);
    lua_setfield(L, -2, "delivery_tag");
    lua_pushboolean(L, d->redelivered);
    lua_setfield(L, -2, "redelivered");
    lua_pushlstring(L, d->exchange.bytes, d->exchange.len);
    lua_setfield(L, -2, "exchange");
    lua_pushlstring(L, d->routing_key.bytes, d->routing_key.len);
    lua_setfield(L, -2, "routing_key");
    lua_pushlstring(L, d->consumer_tag.bytes, d->consumer_tag.len);
    lua_setfield(L, -2, "consumer_tag");
    if (tag > c->tag_max)
        c->tag_max = tag;
    if (read_content(L, c, 1, fn) != EV_OK) {
        lua_settop(L, top);
        return EV_ERROR;
    }
    c->received++;
    amqp_maybe_release_buffers_on_channel(c->st, CHANNEL);
    return EV_MESSAGE;
}

/* Reads and handles one frame (a whole message when one starts), waiting up to tv (NULL:
 * forever). Returns EV_TIMEOUT, EV_MESSAGE (the message table pushed), EV_OTHER (something
 * else was handled, e.g. a confirm) or EV_ERROR (failure recorded in c). */
static int pump(lua_State *L, conn *c, const struct timeval *tv, const char *fn)
{
    amqp_frame_t f;
    const void *d;
    int rc;

    errno = 0;
    rc = amqp_simple_wait_frame_noblock(c->st, &f, tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return EV_TIMEOUT;
    if (rc != AMQP_STATUS_OK)
        return conn_lost(c, rc, errno);
    if (f.channel == 0)
        return on_channel0(c, &f);
    if (f.channel != CHANNEL || f.frame_type != AMQP_FRAME_METHOD)
        return EV_OTHER; /* stray content of a message dropped earlier */
    d = f.payload.method.decoded;
    switch (f.payload.method.id) {
    case AMQP_BASIC_DELIVER_METHOD:
        return on_deliver(L, c, d, fn);
    case AMQP_BASIC_ACK_METHOD:
        on_confirm(c, ((const amqp_basic_ack_t *)d)->delivery_tag,
                   ((const amqp_basic_ack_t *)d)->multiple, 0);
        break;
    case AMQP_BASIC_NACK_METHOD:
        on_confirm(c, ((const amqp_basic_nack_t *)d)->delivery_tag,
                   ((const amqp_basic_nack_t *)d)->multiple, 1);
        break;
    case AMQP_BASIC_RETURN_METHOD:
        c->returned++;
        if (read_content(L, c, 0, fn) != EV_OK)
            return EV_ERROR;
        break;
    case AMQP_BASIC_CANCEL_METHOD: {
        const amqp_basic_cancel_t *m = d;
        char buf[300];
        int n = snprintf(buf, sizeof buf, "consumer '%.*s' was cancelled by the broker",
                         (int)m->consumer_tag.len, (const char *)m->consumer_tag.bytes);
        set_err(c, ERR_CANCEL, 0, "", buf, n < 0 ? 0 : (size_t)n);
        if (!m->nowait) {
            amqp_basic_cancel_ok_t ok;
            ok.consumer_tag = m->consumer_tag;
            errno = 0;
            rc = amqp_send_method(c->st, CHANNEL, AMQP_BASIC_CANCEL_OK_METHOD, &ok);
            if (rc != AMQP_STATUS_OK)
                return conn_lost(c, rc, errno);
        }
        return EV_ERROR;
    }
    case AMQP_CHANNEL_CLOSE_METHOD:
        return channel_reset(c, d);
    default:
        break; /* e.g. channel.flow, a late RPC reply */
    }
    amqp_maybe_release_buffers_on_channel(c->st, CHANNEL);
    return EV_OTHER;
}

/* Pushes the inbox table (user value 1 of the connection at index 1), renewing it when its
 * messages belong to a dead channel. */
static void inbox(lua_State *L, conn *c)
{
    if (c->in_stale) {
        lua_newtable(L);
        lua_setiuservalue(L, 1, 1);
        c->in_head = c->in_tail = 1;
        c->in_stale = 0;
    }
    lua_getiuservalue(L, 1, 1);
}

/* Moves the message on top of the stack to the end of the inbox. */
static void inbox_push(lua_State *L, conn *c)
{
    inbox(L, c);
    lua_insert(L, -2);
    lua_rawseti(L, -2, c->in_tail++);
    lua_pop(L, 1);
}

/* Pushes the first message of the inbox and returns 1, or returns 0 when it is empty. */
static int inbox_pop(lua_State *L, conn *c)
{
    if (!c->in_stale && c->in_head == c->in_tail)
        return 0;
    inbox(L, c);
    if (c->in_head == c->in_tail) {
        lua_pop(L, 1);
        return 0;
    }
    lua_rawgeti(L, -1, c->in_head);
    lua_pushnil(L);
    lua_rawseti(L, -3, c->in_head);
    lua_remove(L, -2);
    if (++c->in_head == c->in_tail)
        c->in_head = c->in_tail = 1;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* URLs                                                                                       */
/* ------------------------------------------------------------------------------------------ */

typedef struct url_t {
    int tls;
    int port;
} url_t;

/* Value of a hex digit, or -1. */
static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Pushes the percent-decoded s[0..len); returns 0 on a bad escape or a decoded NUL byte (the
 * caller then restores the stack). */
static int push_decoded(lua_State *L, const char *s, size_t len)
{
    luaL_Buffer b;
    size_t i;
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            int hi = i + 2 < len ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < len ? hexval((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return 0;
            ch = hi * 16 + lo;
            i += 2;
        }
        if (ch == 0)
            return 0;
        luaL_addchar(&b, (char)ch);
    }
    luaL_pushresult(&b);
    return 1;
}

/* First occurrence of one of chars in s[0..len), or NULL. */
static const char *find_any(const char *s, size_t len, const char *chars)
{
    size_t i;
    for (i = 0; i < len; i++)
        if (strchr(chars, s[i]) != NULL && s[i] != '\0')
            return s + i;
    return NULL;
}

/* Parses amqp[s]://[user[:password]@]host[:port][/vhost]. On success pushes user, password,
 * host and vhost (decoded) and returns 1; otherwise pushes nothing, sets *why (which never
 * quotes the URL: it may hold a password) and returns 0. */
static int parse_url(lua_State *L, const char *s, size_t len, url_t *u, const char **why)
{
    int top = lua_gettop(L);
    const char *end = s + len, *p, *auth_end, *at = NULL, *h, *h_end, *port = NULL;
    const char *q;

    if (len >= 7 && strncasecmp(s, "amqp://", 7) == 0) {
        u->tls = 0;
        p = s + 7;
    } else if (len >= 8 && strncasecmp(s, "amqps://", 8) == 0) {
        u->tls = 1;
        p = s + 8;
    } else {
        *why = "expected amqp://... or amqps://...";
        return 0;
    }
    if (memchr(s, '\0', len) != NULL) {
        *why = "NUL byte in the URL";
        return 0;
    }
    if (find_any(p, (size_t)(end - p), "?#") != NULL) {
        *why = "query strings and fragments are not supported (use the options table)";
        return 0;
    }
    auth_end = find_any(p, (size_t)(end - p), "/");
    if (auth_end == NULL)
        auth_end = end;
    for (q = p; q < auth_end; q++)
        if (*q == '@')
            at = q;
    h = at != NULL ? at + 1 : p;
    h_end = auth_end;
    if (h < h_end && *h == '[') {
        const char *rb = memchr(h, ']', (size_t)(h_end - h));
        if (rb == NULL || (rb + 1 < h_end && rb[1] != ':')) {
            *why = "bad IPv6 address";
            return 0;
        }
        if (rb + 1 < h_end)
            port = rb + 2;
        h_end = rb;
        h++;
    } else {
        const char *colon = memchr(h, ':', (size_t)(h_end - h));
        if (colon != NULL) {
            if (memchr(colon + 1, ':', (size_t)(h_end - colon - 1)) != NULL) {
                *why = "IPv6 addresses must be written in brackets";
                return 0;
            }
            port = colon + 1;
            h_end = colon;
        }
    }
    u->port = u->tls ? 5671 : 5672;
    if (port != NULL) {
        long v = 0;
        const char *d;
        for (d = port; d < auth_end; d++) {
            if (*d < '0' || *d > '9' || v > 65535)
                break;
            v = v * 10 + (*d - '0');
        }
        if (d == port || d != auth_end || v < 1 || v > 65535) {
            *why = "bad port";
            return 0;
        }
        u->port = (int)v;
    }
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!push_decoded(L, p, (size_t)((colon != NULL ? colon : at) - p)))
            goto bad_escape;
        if (colon != NULL) {
            if (!push_decoded(L, colon + 1, (size_t)(at - colon - 1)))
                goto bad_escape;
        } else {
            lua_pushliteral(L, "guest");
        }
    } else {
        lua_pushliteral(L, "guest");
        lua_pushliteral(L, "guest");
    }
    if (h == h_end)
        lua_pushliteral(L, "localhost");
    else if (!push_decoded(L, h, (size_t)(h_end - h)))
        goto bad_escape;
    if (auth_end + 1 >= end) {
        lua_pushliteral(L, "/");
    } else {
        p = auth_end + 1;
        if (memchr(p, '/', (size_t)(end - p)) != NULL) {
            *why = "a '/' in the vhost must be written %2f";
            goto fail;
        }
        if (memchr(p, '@', (size_t)(end - p)) != NULL) {
            *why = "an '@' in the vhost must be written %40";
            goto fail;
        }
        if (!push_decoded(L, p, (size_t)(end - p)))
            goto bad_escape;
    }
    return 1;
bad_escape:
    *why = "bad percent-encoding or NUL byte";
fail:
    lua_settop(L, top);
    return 0;
}

/* Appends s percent-encoded (all but unreserved characters) to b. */
static void add_encoded(luaL_Buffer *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')
            || ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            luaL_addchar(b, (char)ch);
        } else {
            luaL_addchar(b, '%');
            luaL_addchar(b, hex[ch >> 4]);
            luaL_addchar(b, hex[ch & 15]);
        }
    }
}

/* Pushes "host:port" ("[host]:port" for IPv6). */
static void push_target(lua_State *L, const char *host, int port)
{
    if (strchr(host, ':') != NULL)
        lua_pushfstring(L, "[%s]:%d", host, port);
    else
        lua_pushfstring(L, "%s:%d", host, port);
}

/* amqp.parse_url(url) -> {scheme=, user=, host=, port=, vhost=, tls=} | nil, err */
static int l_parse_url(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *why;
    url_t u;
    lua_settop(L, 1);
    if (!parse_url(L, s, len, &u, &why)) {
        lua_pushnil(L);
        lua_pushfstring(L, "amqp.parse_url: invalid URL: %s", why);
        return 2;
    }
    lua_createtable(L, 0, 6); /* 2 user, 3 password, 4 host, 5 vhost, 6 result */
    lua_pushstring(L, u.tls ? "amqps" : "amqp");
    lua_setfield(L, 6, "scheme");
    lua_pushvalue(L, 2);
    lua_setfield(L, 6, "user");
    lua_pushvalue(L, 4);
    lua_setfield(L, 6, "host");
    lua_pushinteger(L, u.port);
    lua_setfield(L, 6, "port");
    lua_pushvalue(L, 5);
    lua_setfield(L, 6, "vhost");
    lua_pushboolean(L, u.tls);
    lua_setfield(L, 6, "tls");
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Connecting                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Connects to host:port within timeout seconds. Returns a non-blocking TCP socket, or -1 with
 * the reason in why. */
static int tcp_connect(const char *host, int port, double timeout, char *why, size_t size)
{
    struct addrinfo hints, *res, *ai;
    char service[16], buf[128];
    double deadline = now_mono() + timeout;
    int fd = -1, rc, err = 0, one = 1;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(service, sizeof service, "%d", port);
    rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        snprintf(why, size, "cannot resolve host: %s",
                 rc == EAI_SYSTEM ? errno_text(errno, buf, sizeof buf) : gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd pfd;
            for (;;) {
                double left = deadline - now_mono();
                pfd.fd = fd;
                pfd.events = POLLOUT;
                pfd.revents = 0;
                rc = poll(&pfd, 1, left <= 0 ? 0 : (int)ceil(left * 1000));
                if (rc >= 0 || errno != EINTR)
                    break;
            }
            if (rc == 0) {
                err = ETIMEDOUT;
            } else if (rc < 0) {
                err = errno;
            } else {
                socklen_t elen = sizeof err;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
                    err = errno;
                if (err == 0)
                    break;
            }
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (err == ETIMEDOUT)
            snprintf(why, size, "connect timed out after %g s", timeout);
        else
            snprintf(why, size, "%s", errno_text(err, buf, sizeof buf));
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Options of amqp.connect. */
typedef struct connopts {
    int heartbeat, frame_max, channel_max, verify;
    double timeout;
    const char *cacert, *cert, *key, *name;
} connopts;

static const char *const connect_opts[] = {
    "heartbeat", "timeout", "frame_max", "channel_max", "cacert", "cert", "key", "verify",
    "name", NULL,
};

/* Reads the options table at idx (may be nil). */
static void read_connopts(lua_State *L, int idx, connopts *o)
{
    o->heartbeat = 30;
    o->frame_max = 131072;
    o->channel_max = 0;
    o->verify = 1;
    o->timeout = 10;
    o->cacert = o->cert = o->key = o->name = NULL;
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    check_opt_names(L, idx, connect_opts, "connect");
    o->heartbeat = (int)opt_int(L, idx, "heartbeat", 30, 0, 65535, "connect");
    o->frame_max = (int)opt_int(L, idx, "frame_max", 131072, 4096, INT32_MAX, "connect");
    o->channel_max = (int)opt_int(L, idx, "channel_max", 0, 0, 65535, "connect");
    o->timeout = opt_num(L, idx, "timeout", 10, 0.001, 86400, "connect");
    o->verify = opt_bool(L, idx, "verify", 1, "connect");
    o->cacert = opt_cstr(L, idx, "cacert", "connect");
    o->cert = opt_cstr(L, idx, "cert", "connect");
    o->key = opt_cstr(L, idx, "key", "connect");
    o->name = opt_cstr(L, idx, "name", "connect");
    if ((o->cert == NULL) != (o->key == NULL))
        luaL_error(L, "amqp.connect: options 'cert' and 'key' go together");
}

/* Fails amqp.connect: nil, "amqp.connect: <target>: <why>", freeing what c holds. */
static int connect_failed(lua_State *L, conn *c, const char *target, const char *why,
                          size_t whylen)
{
    drop(c);
    c->closed = 1;
    lua_pushnil(L);
    lua_pushfstring(L, "amqp.connect: %s: ", target);
    lua_pushlstring(L, why, whylen);
    lua_concat(L, 2);
    return 2;
}

/* Explains a failed login (r) of user to vhost; pushes the reason. */
static void push_login_failure(lua_State *L, conn *c, amqp_rpc_reply_t r, int sys_errno,
                               const char *user, const char *vhost)
{
    char buf[128];
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION
        && r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *m = r.reply.decoded;
        amqp_connection_close_ok_t ok = {0};
        if (m->reply_code == AMQP_ACCESS_REFUSED)
            lua_pushfstring(L, "login refused (ACCESS_REFUSED) for user '%s'", user);
        else if (m->reply_code == AMQP_NOT_ALLOWED)
            lua_pushfstring(L, "vhost '%s' not found or not permitted", vhost);
        else
            lua_pushlstring(L, m->reply_text.bytes, m->reply_text.len);
        amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    } else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION
               && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *m = r.reply.decoded;
        lua_pushlstring(L, m->reply_text.bytes, m->reply_text.len);
    } else if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        if (r.library_error == AMQP_STATUS_CONNECTION_CLOSED)
            lua_pushliteral(L, "the broker closed the connection during the handshake");
        else if (r.library_error == AMQP_STATUS_TIMEOUT)
            lua_pushliteral(L, "handshake timed out");
        else
            lua_pushfstring(L, "handshake failed: %s",
                            status_text(r.library_error, sys_errno, buf, sizeof buf));
    } else {
        lua_pushliteral(L, "handshake failed");
    }
}

/* amqp.connect(url [, opts]) -> conn | nil, err */
static int l_connect(lua_State *L)
{
    size_t len, whylen;
    const char *url = luaL_checklstring(L, 1, &len), *why, *user, *pass, *host, *vhost;
    const char *target;
    char buf[256];
    connopts o;
    url_t u;
    conn *c;
    amqp_socket_t *sock;
    struct timeval tv;
    amqp_table_entry_t caps[2], props[2];
    amqp_table_t props_table;
    amqp_rpc_reply_t r;
    luaL_Buffer b;
    int rc;

    lua_settop(L, 2);
    read_connopts(L, 2, &o);
    if (!parse_url(L, url, len, &u, &why)) {
        lua_pushnil(L);
        lua_pushfstring(L, "amqp.connect: invalid URL: %s", why);
        return 2;
    }
    user = lua_tostring(L, 3);
    pass = lua_tostring(L, 4);
    host = lua_tostring(L, 5);
    vhost = lua_tostring(L, 6);
    push_target(L, host, u.port); /* 7 */
    target = lua_tostring(L, 7);

    c = (conn *)lua_newuserdatauv(L, sizeof *c, 2); /* 8: st NULL, nothing to free yet */
    memset(c, 0, sizeof *c);
    c->in_head = c->in_tail = 1;
    init_amqp_pool(&c->pool, 4096);
    luaL_setmetatable(L, CONN_MT);
    lua_newtable(L);
    lua_setiuservalue(L, 8, 1);

    c->st = amqp_new_connection();
    if (c->st == NULL)
        return luaL_error(L, "amqp.connect: not enough memory");
    tv.tv_sec = (time_t)o.timeout;
    tv.tv_usec = (long)((o.timeout - (double)tv.tv_sec) * 1e6);
    if (u.tls) {
        sock = amqp_ssl_socket_new(c->st);
        if (sock == NULL)
            return connect_failed(L, c, target, "cannot create a TLS socket", 26);
        amqp_ssl_socket_set_verify_peer(sock, (amqp_boolean_t)o.verify);
        amqp_ssl_socket_set_verify_hostname(sock, (amqp_boolean_t)o.verify);
        if (o.cacert != NULL && amqp_ssl_socket_set_cacert(sock, o.cacert) != AMQP_STATUS_OK) {
            snprintf(buf, sizeof buf, "cannot load CA certificates from '%s'", o.cacert);
            return connect_failed(L, c, target, buf, strlen(buf));
        }
        if (o.cert != NULL && amqp_ssl_socket_set_key(sock, o.cert, o.key) != AMQP_STATUS_OK) {
            snprintf(buf, sizeof buf, "cannot load certificate '%s' or key '%s'", o.cert,
                     o.key);
            return connect_failed(L, c, target, buf, strlen(buf));
        }
        errno = 0;
        rc = amqp_socket_open_noblock(sock, host, u.port, &tv);
        if (rc == AMQP_STATUS_SOCKET_ERROR) {
            /* rabbitmq-c does not keep the reason: a second attempt of our own finds it */
            int fd = tcp_connect(host, u.port, o.timeout, buf, sizeof buf);
            if (fd >= 0) {
                close(fd);
                snprintf(buf, sizeof buf, "cannot connect (socket error)");
            }
            return connect_failed(L, c, target, buf, strlen(buf));
        }
        if (rc != AMQP_STATUS_OK) {
            why = rc == AMQP_STATUS_TIMEOUT ? "connect timed out"
                                            : status_text(rc, errno, buf, sizeof buf);
            return connect_failed(L, c, target, why, strlen(why));
        }
    } else {
        int fd;
        sock = amqp_tcp_socket_new(c->st);
        if (sock == NULL)
            return luaL_error(L, "amqp.connect: not enough memory");
        fd = tcp_connect(host, u.port, o.timeout, buf, sizeof buf);
        if (fd < 0)
            return connect_failed(L, c, target, buf, strlen(buf));
        amqp_tcp_socket_set_sockfd(sock, fd);
    }
    amqp_set_handshake_timeout(c->st, &tv);

    caps[0].key = amqp_cstring_bytes("consumer_cancel_notify");
    caps[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    caps[0].value.value.boolean = 1;
    caps[1].key = amqp_cstring_bytes("connection.blocked");
    caps[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    caps[1].value.value.boolean = 1;
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table.num_entries = 2;
    props[0].value.value.table.entries = caps;
    props_table.num_entries = 1;
    props_table.entries = props;
    if (o.name != NULL) {
        props[1].key = amqp_cstring_bytes("connection_name");
        props[1].value.kind = AMQP_FIELD_KIND_UTF8;
        props[1].value.value.bytes = amqp_cstring_bytes(o.name);
        props_table.num_entries = 2;
    }
    errno = 0;
    r = amqp_login_with_properties(c->st, vhost, o.channel_max, o.frame_max, o.heartbeat,
                                   &props_table, AMQP_SASL_METHOD_PLAIN, user, pass);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
        errno = 0;
        if (amqp_channel_open(c->st, CHANNEL) == NULL)
            r = amqp_get_rpc_reply(c->st);
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        push_login_failure(L, c, r, errno, user, vhost);
        why = lua_tolstring(L, -1, &whylen);
        return connect_failed(L, c, target, why, whylen);
    }
    amqp_maybe_release_buffers(c->st);
    c->ready = 1;

    luaL_buffinit(L, &b);
    luaL_addstring(&b, u.tls ? "amqp.connection (amqps://" : "amqp.connection (amqp://");
    add_encoded(&b, user, strlen(user));
    luaL_addchar(&b, '@');
    luaL_addstring(&b, target);
    luaL_addchar(&b, '/');
    add_encoded(&b, vhost, strlen(vhost));
    luaL_addchar(&b, ')');
    luaL_pushresult(&b);
    lua_setiuservalue(L, 8, 2);
    lua_pushvalue(L, 8);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Connection methods: channel-level RPCs                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Releases what the last RPC reply used, unless frames still wait in the library's queue. */
static void rpc_done(conn *c)
{
    amqp_maybe_release_buffers_on_channel(c->st, CHANNEL);
}

/* conn:exchange_declare(name, type [, {passive=false, durable=true, auto_delete=false,
 *                       internal=false, arguments={}}]) -> true | nil, err, code */
static int c_exchange_declare(lua_State *L)
{
    static const char *const names[] = {
        "passive", "durable", "auto_delete", "internal", "arguments", NULL,
    };
    conn *c = checkconn(L, "exchange_declare");
    amqp_bytes_t name = check_shortstr(L, 2), type = check_shortstr(L, 3);
    int passive = 0, durable = 1, auto_delete = 0, internal = 0;
    amqp_table_t args = amqp_empty_table;

    recycle_amqp_pool(&c->pool);
    if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TTABLE);
        check_opt_names(L, 4, names, "exchange_declare");
        passive = opt_bool(L, 4, "passive", 0, "exchange_declare");
        durable = opt_bool(L, 4, "durable", 1, "exchange_declare");
        auto_delete = opt_bool(L, 4, "auto_delete", 0, "exchange_declare");
        internal = opt_bool(L, 4, "internal", 0, "exchange_declare");
        args = opt_table(L, c, 4, "exchange_declare");
    }
    if (c->st == NULL)
        return closed_result(L, "exchange_declare");
    errno = 0;
    if (amqp_exchange_declare(c->st, CHANNEL, name, type, (amqp_boolean_t)passive,
                              (amqp_boolean_t)durable, (amqp_boolean_t)auto_delete,
                              (amqp_boolean_t)internal, args) == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "exchange_declare");
    }
    rpc_done(c);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:exchange_delete(name [, if_unused]) -> true | nil, err, code */
static int c_exchange_delete(lua_State *L)
{
    conn *c = checkconn(L, "exchange_delete");
    amqp_bytes_t name = check_shortstr(L, 2);
    int if_unused = opt_bool_arg(L, 3, 0);
    if (c->st == NULL)
        return closed_result(L, "exchange_delete");
    errno = 0;
    if (amqp_exchange_delete(c->st, CHANNEL, name, (amqp_boolean_t)if_unused) == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "exchange_delete");
    }
    rpc_done(c);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:queue_declare(name [, {durable=true, exclusive=false, auto_delete=false, passive=false,
 *                    arguments={}}]) -> name, message_count, consumer_count | nil, err, code */
static int c_queue_declare(lua_State *L)
{
    static const char *const names[] = {
        "passive", "durable", "exclusive", "auto_delete", "arguments", NULL,
    };
    conn *c = checkconn(L, "queue_declare");
    amqp_bytes_t name = check_shortstr(L, 2);
    int passive = 0, durable = 1, exclusive = 0, auto_delete = 0;
    amqp_table_t args = amqp_empty_table;
    amqp_queue_declare_ok_t *ok;

    recycle_amqp_pool(&c->pool);
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        check_opt_names(L, 3, names, "queue_declare");
        passive = opt_bool(L, 3, "passive", 0, "queue_declare");
        durable = opt_bool(L, 3, "durable", 1, "queue_declare");
        exclusive = opt_bool(L, 3, "exclusive", 0, "queue_declare");
        auto_delete = opt_bool(L, 3, "auto_delete", 0, "queue_declare");
        args = opt_table(L, c, 3, "queue_declare");
    }
    if (c->st == NULL)
        return closed_result(L, "queue_declare");
    errno = 0;
    ok = amqp_queue_declare(c->st, CHANNEL, name, (amqp_boolean_t)passive,
                            (amqp_boolean_t)durable, (amqp_boolean_t)exclusive,
                            (amqp_boolean_t)auto_delete, args);
    if (ok == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "queue_declare");
    }
    lua_pushlstring(L, ok->queue.bytes, ok->queue.len);
    lua_pushinteger(L, (lua_Integer)ok->message_count);
    lua_pushinteger(L, (lua_Integer)ok->consumer_count);
    rpc_done(c);
    return 3;
}

/* conn:queue_bind(queue, exchange, key [, arguments]) -> true | nil, err, code */
static int c_queue_bind(lua_State *L)
{
    conn *c = checkconn(L, "queue_bind");
    amqp_bytes_t q = check_shortstr(L, 2), x = check_shortstr(L, 3), k = check_shortstr(L, 4);
    amqp_table_t args;
    recycle_amqp_pool(&c->pool);
    args = opt_table_arg(L, c, 5, "queue_bind");
    if (c->st == NULL)
        return closed_result(L, "queue_bind");
    errno = 0;
    if (amqp_queue_bind(c->st, CHANNEL, q, x, k, args) == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "queue_bind");
    }
    rpc_done(c);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:queue_unbind(queue, exchange, key [, arguments]) -> true | nil, err, code */
static int c_queue_unbind(lua_State *L)
{
    conn *c = checkconn(L, "queue_unbind");
    amqp_bytes_t q = check_shortstr(L, 2), x = check_shortstr(L, 3), k = check_shortstr(L, 4);
    amqp_table_t args;
    recycle_amqp_pool(&c->pool);
    args = opt_table_arg(L, c, 5, "queue_unbind");
    if (c->st == NULL)
        return closed_result(L, "queue_unbind");
    errno = 0;
    if (amqp_queue_unbind(c->st, CHANNEL, q, x, k, args) == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "queue_unbind");
    }
    rpc_done(c);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:queue_purge(queue) -> message_count | nil, err, code */
static int c_queue_purge(lua_State *L)
{
    conn *c = checkconn(L, "queue_purge");
    amqp_bytes_t q = check_shortstr(L, 2);
    amqp_queue_purge_ok_t *ok;
    if (c->st == NULL)
        return closed_result(L, "queue_purge");
    errno = 0;
    ok = amqp_queue_purge(c->st, CHANNEL, q);
    if (ok == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "queue_purge");
    }
    lua_pushinteger(L, (lua_Integer)ok->message_count);
    rpc_done(c);
    return 1;
}

/* conn:queue_delete(queue [, {if_unused=false, if_empty=false}]) -> message_count | nil, err */
static int c_queue_delete(lua_State *L)
{
    static const char *const names[] = {"if_unused", "if_empty", NULL};
    conn *c = checkconn(L, "queue_delete");
    amqp_bytes_t q = check_shortstr(L, 2);
    int if_unused = 0, if_empty = 0;
    amqp_queue_delete_ok_t *ok;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        check_opt_names(L, 3, names, "queue_delete");
        if_unused = opt_bool(L, 3, "if_unused", 0, "queue_delete");
        if_empty = opt_bool(L, 3, "if_empty", 0, "queue_delete");
    }
    if (c->st == NULL)
        return closed_result(L, "queue_delete");
    errno = 0;
    ok = amqp_queue_delete(c->st, CHANNEL, q, (amqp_boolean_t)if_unused,
                           (amqp_boolean_t)if_empty);
    if (ok == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "queue_delete");
    }
    lua_pushinteger(L, (lua_Integer)ok->message_count);
    rpc_done(c);
    return 1;
}

/* conn:qos(prefetch_count [, global]) -> true | nil, err, code */
static int c_qos(lua_State *L)
{
    conn *c = checkconn(L, "qos");
    lua_Integer n = luaL_checkinteger(L, 2);
    int global = opt_bool_arg(L, 3, 0);
    luaL_argcheck(L, n >= 0 && n <= 65535, 2, "prefetch count must be 0..65535");
    if (c->st == NULL)
        return closed_result(L, "qos");
    errno = 0;
    if (amqp_basic_qos(c->st, CHANNEL, 0, (uint16_t)n, (amqp_boolean_t)global) == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "qos");
    }
    rpc_done(c);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:consume(queue [, {tag="", no_ack=false, exclusive=false, arguments={}}])
 *   -> consumer_tag | nil, err, code */
static int c_consume(lua_State *L)
{
    static const char *const names[] = {"tag", "no_ack", "exclusive", "arguments", NULL};
    conn *c = checkconn(L, "consume");
    amqp_bytes_t q = check_shortstr(L, 2), tag = amqp_empty_bytes;
    int no_ack = 0, exclusive = 0;
    amqp_table_t args = amqp_empty_table;
    amqp_basic_consume_ok_t *ok;

    recycle_amqp_pool(&c->pool);
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        check_opt_names(L, 3, names, "consume");
        no_ack = opt_bool(L, 3, "no_ack", 0, "consume");
        exclusive = opt_bool(L, 3, "exclusive", 0, "consume");
        args = opt_table(L, c, 3, "consume");
        if (lua_getfield(L, 3, "tag") != LUA_TNIL) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "amqp.consume: option 'tag' must be a string");
            tag.bytes = (void *)lua_tolstring(L, -1, &tag.len);
            if (tag.len > 255)
                return luaL_error(L, "amqp.consume: option 'tag' longer than 255 bytes");
        }
        lua_pop(L, 1); /* the tag stays referenced by the options */
    }
    if (c->st == NULL)
        return closed_result(L, "consume");
    errno = 0;
    ok = amqp_basic_consume(c->st, CHANNEL, q, tag, 0, (amqp_boolean_t)no_ack,
                            (amqp_boolean_t)exclusive, args);
    if (ok == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "consume");
    }
    lua_pushlstring(L, ok->consumer_tag.bytes, ok->consumer_tag.len);
    rpc_done(c);
    return 1;
}

/* conn:cancel(consumer_tag) -> true | nil, err, code */
static int c_cancel(lua_State *L)
{
    conn *c = checkconn(L, "cancel");
    amqp_bytes_t tag = check_shortstr(L, 2);
    if (c->st == NULL)
        return closed_result(L, "cancel");
    errno = 0;
    if (amqp_basic_cancel(c->st, CHANNEL, tag) == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "cancel");
    }
    rpc_done(c);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:confirm_select() -> true | nil, err, code */
static int c_confirm_select(lua_State *L)
{
    conn *c = checkconn(L, "confirm_select");
    if (c->st == NULL)
        return closed_result(L, "confirm_select");
    errno = 0;
    if (amqp_confirm_select(c->st, CHANNEL) == NULL) {
        rpc_failed(c, errno);
        return failure(L, c, "confirm_select");
    }
    rpc_done(c);
    if (!c->confirm) {
        c->confirm = 1;
        c->seq_base = c->seq_last;
        c->upto = c->seq_last;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Publishing                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* Reads the publish properties table at idx into p; sets *mandatory. */
static void read_props(lua_State *L, conn *c, int idx, amqp_basic_properties_t *p,
                       int *mandatory)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k;
        size_t i;
        int t = lua_type(L, -1);
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "amqp.publish: property names must be strings");
        k = lua_tostring(L, -2);
        for (i = 0; i < NSTRPROPS && strcmp(k, strprops[i].name) != 0; i++)
            ;
        if (i < NSTRPROPS) {
            amqp_bytes_t *b = (amqp_bytes_t *)((char *)p + strprops[i].off);
            if (t != LUA_TSTRING)
                luaL_error(L, "amqp.publish: property '%s' must be a string", k);
            b->bytes = (void *)lua_tolstring(L, -1, &b->len);
            if (b->len > 255)
                luaL_error(L, "amqp.publish: property '%s' longer than 255 bytes", k);
            p->_flags |= strprops[i].flag;
        } else if (strcmp(k, "persistent") == 0) {
            if (t != LUA_TBOOLEAN)
                luaL_error(L, "amqp.publish: property 'persistent' must be a boolean");
            p->delivery_mode = lua_toboolean(L, -1) ? 2 : 1;
        } else if (strcmp(k, "mandatory") == 0) {
            if (t != LUA_TBOOLEAN)
                luaL_error(L, "amqp.publish: property 'mandatory' must be a boolean");
            *mandatory = lua_toboolean(L, -1);
        } else if (strcmp(k, "priority") == 0) {
            lua_Integer v = lua_tointeger(L, -1);
            if (!lua_isinteger(L, -1) || v < 0 || v > 255)
                luaL_error(L, "amqp.publish: property 'priority' must be an integer 0..255");
            p->priority = (uint8_t)v;
            p->_flags |= AMQP_BASIC_PRIORITY_FLAG;
        } else if (strcmp(k, "timestamp") == 0) {
            lua_Integer v = lua_tointeger(L, -1);
            if (!lua_isinteger(L, -1) || v < 0)
                luaL_error(L, "amqp.publish: property 'timestamp' must be a non-negative "
                              "integer");
            p->timestamp = (uint64_t)v;
            p->_flags |= AMQP_BASIC_TIMESTAMP_FLAG;
        } else if (strcmp(k, "headers") == 0) {
            if (t != LUA_TTABLE)
                luaL_error(L, "amqp.publish: property 'headers' must be a table");
            to_table(L, c, lua_gettop(L), &p->headers, 0, "publish");
            p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        } else {
            luaL_error(L, "amqp.publish: unknown property '%s'", k);
        }
        lua_pop(L, 1); /* the value stays referenced by the table */
    }
}

/* Whether the broker takes more data: not blocked (connection.blocked), and the socket has
 * room within SEND_WAIT_MS (a broker that stops reading, e.g. on an alarm, would otherwise
 * leave the send waiting for ever). */
#define SEND_WAIT_MS 1000
static int can_send(conn *c)
{
    struct pollfd pfd;
    double deadline;
    int r;
    if (c->blocked)
        return 0;
    pfd.fd = amqp_get_sockfd(c->st);
    pfd.events = POLLOUT;
    pfd.revents = 0;
    if (poll(&pfd, 1, 0) != 0)
        return 1;                /* room (or an error, which shows in the send itself) */
    deadline = now_mono() + SEND_WAIT_MS / 1000.0;
    for (;;) {
        double left = deadline - now_mono();
        pfd.revents = 0;
        r = poll(&pfd, 1, left > 0 ? (int)(left * 1000) : 0);
        if (r >= 0 || errno != EINTR || left <= 0)
            return r != 0;
    }
}

/* conn:publish(exchange, routing_key, body [, props]) -> seqno | false, why | nil, err
 * seqno is 1, 2, ... in confirm mode (per connection), 0 otherwise. false: nothing was sent,
 * the broker blocks publishing for now (why: its reason); confirms() or receive() read the
 * frame that ends it, then publish again. */
static int c_publish(lua_State *L)
{
    conn *c = checkconn(L, "publish");
    amqp_bytes_t x = check_shortstr(L, 2), k = check_shortstr(L, 3), body;
    amqp_basic_properties_t p;
    int mandatory = 0, rc;

    body.bytes = (void *)luaL_checklstring(L, 4, &body.len);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = 2;
    if (!lua_isnoneornil(L, 5)) {
        luaL_checktype(L, 5, LUA_TTABLE);
        recycle_amqp_pool(&c->pool);
        read_props(L, c, 5, &p, &mandatory);
    }
    if (c->st == NULL)
        return closed_result(L, "publish");
    if (!can_send(c)) {
        lua_pushboolean(L, 0);
        if (c->blocked)
            lua_pushfstring(L, "the broker blocks publishing (%s)",
                            c->blocked_why[0] != '\0' ? c->blocked_why : "no reason given");
        else
            lua_pushliteral(L, "the broker takes no more data for now");
        return 2;
    }
    errno = 0;
    rc = amqp_basic_publish(c->st, CHANNEL, x, k, (amqp_boolean_t)mandatory, 0, &p, body);
    if (rc != AMQP_STATUS_OK) {
        conn_lost(c, rc, errno);
        return failure(L, c, "publish");
    }
    c->published++;
    lua_pushinteger(L, c->confirm ? (lua_Integer)++c->seq_last : 0);
    return 1;
}

/* conn:confirms([timeout]) -> upto, nacked | nil, err, code
 * Handles the confirms that arrived; with timeout > 0 waits up to that long for at least one
 * new confirm when some are outstanding. upto: every seqno <= upto is acked or nacked;
 * nacked: nil or the array of seqnos nacked since the last call. */
static int c_confirms(lua_State *L)
{
    conn *c = checkconn(L, "confirms");
    double deadline = opt_deadline(L, 2, 0.0);
    uint64_t before = c->acked + c->nacked;
    struct timeval zero = {0, 0}, tv;
    size_t i;

    if (c->st == NULL)
        return closed_result(L, "confirms");
    for (;;) {
        int wait = c->acked + c->nacked == before && c->upto < c->seq_last;
        int ev = pump(L, c, wait ? time_left(deadline, &tv) : &zero, "confirms");
        if (ev == EV_TIMEOUT)
            break;
        if (ev == EV_MESSAGE) {
            inbox_push(L, c);
        } else if (ev == EV_ERROR) {
            if (c->err_kind != ERR_CANCEL)
                return failure(L, c, "confirms");
            c->err_deferred = 1; /* for receive*() to report */
        }
    }
    lua_pushinteger(L, (lua_Integer)c->upto);
    if (c->nacks.n == 0) {
        lua_pushnil(L);
    } else {
        lua_createtable(L, (int)c->nacks.n, 0);
        for (i = 0; i < c->nacks.n; i++) {
            lua_pushinteger(L, (lua_Integer)c->nacks.v[i]);
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        c->nacks.n = 0;
    }
    return 2;
}

/* ------------------------------------------------------------------------------------------ */
/* Consuming                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Reports a consumer cancel that an earlier call saw, if any: returns the number of results
 * pushed, or 0. */
static int deferred_failure(lua_State *L, conn *c, const char *fn)
{
    if (!c->err_deferred)
        return 0;
    c->err_deferred = 0;
    return failure(L, c, fn);
}

/* conn:receive([timeout]) -> msg | false (timeout) | nil, err, code
 * Without timeout, waits as long as it takes; 0 polls. */
static int c_receive(lua_State *L)
{
    conn *c = checkconn(L, "receive");
    double deadline = opt_deadline(L, 2, HUGE_VAL);
    struct timeval tv;
    int n;

    lua_settop(L, 2);
    if (inbox_pop(L, c))
        return 1;
    if (c->st == NULL)
        return closed_result(L, "receive");
    if ((n = deferred_failure(L, c, "receive")) > 0)
        return n;
    for (;;) {
        switch (pump(L, c, time_left(deadline, &tv), "receive")) {
        case EV_MESSAGE:
            return 1;
        case EV_TIMEOUT:
            lua_pushboolean(L, 0);
            return 1;
        case EV_ERROR:
            return failure(L, c, "receive");
        default:
            break;
        }
    }
}

/* conn:receive_batch(max [, timeout]) -> {msg...} | nil, err, code
 * Waits up to timeout (default: forever) for a first message, then takes without waiting
 * what else has arrived, up to max messages. An empty array means the timeout expired. */
static int c_receive_batch(lua_State *L)
{
    conn *c = checkconn(L, "receive_batch");
    lua_Integer max = luaL_checkinteger(L, 2), n = 0;
    double deadline = opt_deadline(L, 3, HUGE_VAL);
    struct timeval zero = {0, 0}, tv;
    int r;

    luaL_argcheck(L, max >= 1, 2, "must be positive");
    lua_settop(L, 3);
    lua_createtable(L, max < 256 ? (int)max : 256, 0); /* 4 */
    while (n < max && inbox_pop(L, c))
        lua_rawseti(L, 4, ++n);
    if (c->st == NULL)
        return n > 0 ? 1 : closed_result(L, "receive_batch");
    if (n == 0 && (r = deferred_failure(L, c, "receive_batch")) > 0)
        return r;
    while (n < max) {
        int ev = pump(L, c, n == 0 ? time_left(deadline, &tv) : &zero, "receive_batch");
        if (ev == EV_MESSAGE) {
            lua_rawseti(L, 4, ++n);
        } else if (ev == EV_TIMEOUT) {
            break;
        } else if (ev == EV_ERROR) {
            if (c->err_kind == ERR_CANCEL && n > 0) {
                c->err_deferred = 1; /* these messages are still valid */
                break;
            }
            return failure(L, c, "receive_batch");
        }
    }
    return 1;
}

enum { SETTLE_ACK, SETTLE_NACK, SETTLE_REJECT };

/* ack / nack / reject of a delivery tag. */
static int settle(lua_State *L, int kind, const char *fn)
{
    conn *c = checkconn(L, fn);
    lua_Integer tag = luaL_checkinteger(L, 2);
    int multiple = kind == SETTLE_REJECT ? 0 : opt_bool_arg(L, 3, 0);
    int requeue = kind == SETTLE_NACK ? opt_bool_arg(L, 4, 1)
                  : kind == SETTLE_REJECT ? opt_bool_arg(L, 3, 1) : 0;
    uint64_t btag;
    int rc;

    luaL_argcheck(L, tag >= 0 && (uint64_t)tag <= c->tag_max, 2, "unknown delivery tag");
    luaL_argcheck(L, tag > 0 || multiple, 2, "delivery tag 0 needs multiple");
    if (c->st == NULL)
        return closed_result(L, fn);
    if (tag > 0 && (uint64_t)tag <= c->tag_base) {
        lua_pushnil(L);
        lua_pushfstring(L, "amqp.%s: delivery tag %I is stale: the channel was reset since "
                           "(the broker requeued the message)", fn, tag);
        return 2;
    }
    btag = tag == 0 ? 0 : (uint64_t)tag - c->tag_base;
    errno = 0;
    if (kind == SETTLE_ACK)
        rc = amqp_basic_ack(c->st, CHANNEL, btag, (amqp_boolean_t)multiple);
    else if (kind == SETTLE_NACK)
        rc = amqp_basic_nack(c->st, CHANNEL, btag, (amqp_boolean_t)multiple,
                             (amqp_boolean_t)requeue);
    else
        rc = amqp_basic_reject(c->st, CHANNEL, btag, (amqp_boolean_t)requeue);
    if (rc != AMQP_STATUS_OK) {
        conn_lost(c, rc, errno);
        return failure(L, c, fn);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:ack(delivery_tag [, multiple]) -> true | nil, err */
static int c_ack(lua_State *L)
{
    return settle(L, SETTLE_ACK, "ack");
}

/* conn:nack(delivery_tag [, multiple [, requeue=true]]) -> true | nil, err */
static int c_nack(lua_State *L)
{
    return settle(L, SETTLE_NACK, "nack");
}

/* conn:reject(delivery_tag [, requeue=true]) -> true | nil, err */
static int c_reject(lua_State *L)
{
    return settle(L, SETTLE_REJECT, "reject");
}

/* ------------------------------------------------------------------------------------------ */
/* Life cycle                                                                                 */
/* ------------------------------------------------------------------------------------------ */

/* conn:close() -> true. Graceful (waits up to 2 s for the broker's close-ok); safe twice;
 * also __gc and __close. */
static int c_close(lua_State *L)
{
    conn *c = (conn *)luaL_checkudata(L, 1, CONN_MT);
    if (c->st != NULL) {
        struct timeval tv = {2, 0};
        if (c->ready) {
            amqp_set_rpc_timeout(c->st, &tv);
            amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
        }
        amqp_destroy_connection(c->st);
        c->st = NULL;
    }
    if (!c->closed) {
        c->closed = 1;
        empty_amqp_pool(&c->pool);
        seqset_free(&c->done);
        seqset_free(&c->nacks);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:is_open() -> boolean (false once closed or lost) */
static int c_is_open(lua_State *L)
{
    conn *c = (conn *)luaL_checkudata(L, 1, CONN_MT);
    lua_pushboolean(L, !c->closed && c->st != NULL);
    return 1;
}

/* conn:stats() -> {published=, confirmed=, nacked=, returned=, received=}
 * confirmed counts the acks, nacked the nacks (including the seqnos a channel reset left
 * unconfirmed). Works on a lost connection too. */
static int c_stats(lua_State *L)
{
    conn *c = checkconn(L, "stats");
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)c->published);
    lua_setfield(L, -2, "published");
    lua_pushinteger(L, (lua_Integer)c->acked);
    lua_setfield(L, -2, "confirmed");
    lua_pushinteger(L, (lua_Integer)c->nacked);
    lua_setfield(L, -2, "nacked");
    lua_pushinteger(L, (lua_Integer)c->returned);
    lua_setfield(L, -2, "returned");
    lua_pushinteger(L, (lua_Integer)c->received);
    lua_setfield(L, -2, "received");
    return 1;
}

/* tostring(conn) -> "amqp.connection (amqp://user@host:port/vhost)" | "amqp.connection (closed)" */
static int c_tostring(lua_State *L)
{
    conn *c = (conn *)luaL_checkudata(L, 1, CONN_MT);
    if (c->closed || c->st == NULL)
        lua_pushliteral(L, "amqp.connection (closed)");
    else
        lua_getiuservalue(L, 1, 2);
    return 1;
}

/* amqp.version() -> rabbitmq-c's version string */
static int l_version(lua_State *L)
{
    lua_pushstring(L, amqp_version());
    return 1;
}

static const luaL_Reg conn_methods[] = {
    {"exchange_declare", c_exchange_declare},
    {"exchange_delete", c_exchange_delete},
    {"queue_declare", c_queue_declare},
    {"queue_bind", c_queue_bind},
    {"queue_unbind", c_queue_unbind},
    {"queue_purge", c_queue_purge},
    {"queue_delete", c_queue_delete},
    {"confirm_select", c_confirm_select},
    {"publish", c_publish},
    {"confirms", c_confirms},
    {"qos", c_qos},
    {"consume", c_consume},
    {"cancel", c_cancel},
    {"receive", c_receive},
    {"receive_batch", c_receive_batch},
    {"ack", c_ack},
    {"nack", c_nack},
    {"reject", c_reject},
    {"close", c_close},
    {"is_open", c_is_open},
    {"stats", c_stats},
    {NULL, NULL},
};

static const luaL_Reg conn_meta[] = {
    {"__gc", c_close},
    {"__close", c_close},
    {"__tostring", c_tostring},
    {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"connect", l_connect},
    {"parse_url", l_parse_url},
    {"version", l_version},
    {NULL, NULL},
};

int luaopen_lproc_amqp(lua_State *L)
{
    luaL_newmetatable(L, CONN_MT);
    luaL_setfuncs(L, conn_meta, 0);
    luaL_newlib(L, conn_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    luaL_newlib(L, funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
