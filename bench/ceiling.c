/*
 * ceiling.c - the broker's own limit on this machine, measured with bare rabbitmq-c.
 *
 *   ceiling publish FILE [WINDOW [PROPS]]
 *                                      every line of FILE as a persistent message to the
 *                                      exchange "logs" (key "logs"), confirms in a window;
 *                                      PROPS "bare" (default: content_type only) or "lproc"
 *                                      (also message_id, timestamp and the headers x-source
 *                                      and x-offset, as the lproc producer sends them)
 *   ceiling consume QUEUE COUNT [PREFETCH]
 *                                      drain COUNT messages, multiple-ack every 500
 *   ceiling declare                    declare the exchange and both queues, then exit
 *
 * The broker URL comes from LPROC_AMQP_URL (never from the command line). publish and consume
 * print one line: "<messages> messages in <seconds> s: <rate> msg/s, <cpu> s CPU". This is
 * the reference that the lproc producer and consumers are compared with in bench/run.sh.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* User + system CPU seconds this process has used so far. */
static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Prints the result line of publish and consume. */
static void report(uint64_t n, double t0)
{
    double dt = now() - t0;
    printf("%llu messages in %.3f s: %.0f msg/s, %.2f s CPU\n", (unsigned long long)n, dt,
           dt > 0 ? (double)n / dt : 0.0, cpu_seconds());
}

static void die(const char *what)
{
    fprintf(stderr, "ceiling: %s\n", what);
    exit(1);
}

static void check_rpc(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        die(what);
}

/* Opens a connection and channel 1 from LPROC_AMQP_URL. */
static amqp_connection_state_t open_conn(void)
{
    const char *env = getenv("LPROC_AMQP_URL");
    struct amqp_connection_info ci;
    amqp_connection_state_t c;
    amqp_socket_t *s;
    char *url;

    if (env == NULL)
        die("LPROC_AMQP_URL is not set");
    url = strdup(env);
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
        die("LPROC_AMQP_URL is not a valid amqp:// URL");
    c = amqp_new_connection();
    s = amqp_tcp_socket_new(c);
    if (s == NULL || amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK)
        die("cannot connect to the broker");
    check_rpc(amqp_login(c, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
              "login failed");
    amqp_channel_open(c, 1);
    check_rpc(amqp_get_rpc_reply(c), "channel.open failed");
    free(url);
    return c;
}

/* Declares lproc's topology: durable topic exchange "logs", durable queues queue-data-lake
 * and queue-data-clean bound with key "logs". */
static void declare(amqp_connection_state_t c)
{
    static const char *queues[] = {"queue-data-lake", "queue-data-clean"};
    size_t i;
    amqp_exchange_declare(c, 1, amqp_cstring_bytes("logs"), amqp_cstring_bytes("topic"), 0, 1, 0,
                          0, amqp_empty_table);
    check_rpc(amqp_get_rpc_reply(c), "exchange.declare failed");
    for (i = 0; i < 2; i++) {
        amqp_queue_declare(c, 1, amqp_cstring_bytes(queues[i]), 0, 1, 0, 0, amqp_empty_table);
        check_rpc(amqp_get_rpc_reply(c), "queue.declare failed");
        amqp_queue_bind(c, 1, amqp_cstring_bytes(queues[i]), amqp_cstring_bytes("logs"),
                        amqp_cstring_bytes("logs"), amqp_empty_table);
        check_rpc(amqp_get_rpc_reply(c), "queue.bind failed");
    }
}

/* Reads confirm frames; returns the highest delivery tag acknowledged (multiple-aware). */
static uint64_t read_confirms(amqp_connection_state_t c, uint64_t acked, int block)
{
    amqp_frame_t f;
    struct timeval tv = {0, 0};
    for (;;) {
        int rc = amqp_simple_wait_frame_noblock(c, &f, block ? NULL : &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            return acked;
        if (rc != AMQP_STATUS_OK)
            die("connection lost while reading confirms");
        if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            if (a->delivery_tag > acked)
                acked = a->delivery_tag;
        } else if (f.frame_type == AMQP_FRAME_METHOD &&
                   f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            die("the broker nacked a message");
        }
        block = 0;
    }
}

/* A 64-character lower-case hex id for line number n (the size of lproc's SHA-256 ids). */
static void fake_id(uint64_t n, char out[65])
{
    uint64_t x = n * 0x9E3779B97F4A7C15ull;
    int i;
    for (i = 0; i < 64; i++) {
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        out[i] = "0123456789abcdef"[(x >> 60) & 15];
    }
    out[64] = '\0';
}

/* Publishes every line of path; lproc_props: send lproc's properties, not just content_type. */
static int publish(const char *path, uint64_t window, int lproc_props)
{
    amqp_connection_state_t c = open_conn();
    amqp_basic_properties_t props;
    amqp_table_entry_t hdr[2];
    char id[65];
    uint64_t offset = 0;
    FILE *f = fopen(path, "rb");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    uint64_t sent = 0, acked = 0;
    double t0;

    if (f == NULL)
        die("cannot open the input file");
    declare(c);
    amqp_confirm_select(c, 1);
    check_rpc(amqp_get_rpc_reply(c), "confirm.select failed");
    memset(&props, 0, sizeof props);
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.delivery_mode = 2;
    props.content_type = amqp_cstring_bytes("text/plain");
    if (lproc_props) {
        props._flags |= AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                        AMQP_BASIC_HEADERS_FLAG;
        hdr[0].key = amqp_cstring_bytes("x-source");
        hdr[0].value.kind = AMQP_FIELD_KIND_UTF8;
        hdr[0].value.value.bytes = amqp_cstring_bytes(path);
        hdr[1].key = amqp_cstring_bytes("x-offset");
        hdr[1].value.kind = AMQP_FIELD_KIND_I64;
        props.headers.num_entries = 2;
        props.headers.entries = hdr;
    }
    t0 = now();
    while ((len = getline(&line, &cap, f)) > 0) {
        amqp_bytes_t body = {(size_t)(line[len - 1] == '\n' ? len - 1 : len), line};
        if (lproc_props) {
            fake_id(sent, id);
            props.message_id = amqp_cstring_bytes(id);
            props.timestamp = (uint64_t)time(NULL);
            hdr[1].value.value.i64 = (int64_t)offset;
            offset += (uint64_t)len;
        }
        if (amqp_basic_publish(c, 1, amqp_cstring_bytes("logs"), amqp_cstring_bytes("logs"), 0, 0,
                               &props, body) != AMQP_STATUS_OK)
            die("publish failed");
        sent++;
        if (sent - acked >= window) {
            while (sent - acked > window / 2)
                acked = read_confirms(c, acked, 1);
        } else if (sent % 256 == 0) {
            acked = read_confirms(c, acked, 0);
        }
    }
    while (acked < sent)
        acked = read_confirms(c, acked, 1);
    report(sent, t0);
    free(line);
    fclose(f);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

static int consume(const char *queue, uint64_t count, uint16_t prefetch)
{
    amqp_connection_state_t c = open_conn();
    uint64_t got = 0;
    double t0 = 0;

    amqp_basic_qos(c, 1, 0, prefetch, 0);
    check_rpc(amqp_get_rpc_reply(c), "basic.qos failed");
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    check_rpc(amqp_get_rpc_reply(c), "basic.consume failed");
    while (got < count) {
        amqp_envelope_t env;
        amqp_rpc_reply_t r;
        amqp_maybe_release_buffers(c);
        r = amqp_consume_message(c, &env, NULL, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL)
            die("connection lost while consuming");
        if (got == 0)
            t0 = now();
        got++;
        if (got % 500 == 0 || got == count)
            amqp_basic_ack(c, 1, env.delivery_tag, 1);
        amqp_destroy_envelope(&env);
    }
    report(got, t0);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "publish") == 0) {
        uint64_t window = argc > 3 ? strtoull(argv[3], NULL, 10) : 4096;
        if (window < 2)
            die("WINDOW must be at least 2");
        if (argc > 4 && strcmp(argv[4], "lproc") != 0 && strcmp(argv[4], "bare") != 0)
            die("PROPS must be bare or lproc");
        return publish(argv[2], window, argc > 4 && strcmp(argv[4], "lproc") == 0);
    }
    if (argc == 2 && strcmp(argv[1], "declare") == 0) {
        amqp_connection_state_t c = open_conn();
        declare(c);
        amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(c);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "consume") == 0)
        return consume(argv[2], strtoull(argv[3], NULL, 10),
                       (uint16_t)(argc > 4 ? atoi(argv[4]) : 1000));
    fprintf(stderr, "usage: ceiling publish FILE [WINDOW [bare|lproc]] | "
                    "ceiling consume QUEUE COUNT [PREFETCH] | ceiling declare\n");
    return 2;
}
