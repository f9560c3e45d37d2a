-- lproc.amqp against the private RabbitMQ of tests/run.sh.
local T = require "testing"
local amqp = require "lproc.amqp"

local URL = T.env("LPROC_TEST_AMQP_URL")
local U = assert(amqp.parse_url(URL))
local PASSWORD = URL:match("^amqp://[^:]*:([^@]*)@")
local TARGET = U.host .. ":" .. U.port

-- T.err expectation: exactly msg, after the "file:line: " that luaL_error prepends.
local function E(msg)
    return { pattern = "^[^:]+:%d+: " .. msg:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0") .. "$" }
end

-- A connection that the test must get.
local function connect(opts)
    local c, err = amqp.connect(URL, opts)
    T.ok(c, err)
    return c
end

-- A fresh, empty queue: classic and non-durable unless opts say otherwise.
local function fresh_queue(c, name, opts)
    c:queue_delete(name)
    opts = opts or { durable = false }
    T.eq({ c:queue_declare(name, opts) }, { name, 0, 0 }, "declare " .. name)
    return name
end

-- Messages ready in queue q.
local function ready(c, q)
    local _, n = assert(c:queue_declare(q, { passive = true }))
    return n
end

-- Waits (30 s at most) until every seqno <= seq is confirmed; none may be nacked.
local function wait_confirms(c, seq)
    local upto, nacked
    local deadline = os.time() + 30
    while os.time() < deadline do
        upto, nacked = c:confirms(1)
        T.ok(upto, nacked)
        T.eq(nacked, nil, "nacked")
        if upto >= seq then return upto end
    end
    T.eq(upto, seq, "confirmed up to")
end

-- Publishes bodies to queue q with confirms and waits until all are confirmed.
local function publish_all(c, q, bodies, props)
    assert(c:confirm_select())
    local last
    for _, b in ipairs(bodies) do last = assert(c:publish("", q, b, props)) end
    wait_confirms(c, last)
end

T.test("version and module fields", function()
    T.ok(amqp.version():match("^%d+%.%d+%.%d+$"), amqp.version())
    T.eq(type(amqp.connect), "function")
    T.eq(amqp.null, amqp.null)
end)

T.test("parse_url", function()
    local cases = {
        { "amqp://u:p@h:1234/v", { scheme = "amqp", user = "u", host = "h", port = 1234,
                                   vhost = "v", tls = false } },
        { "amqp://h", { scheme = "amqp", user = "guest", host = "h", port = 5672, vhost = "/",
                        tls = false } },
        { "amqp://h/", { scheme = "amqp", user = "guest", host = "h", port = 5672, vhost = "/",
                         tls = false } },
        { "amqps://u@h/%2f", { scheme = "amqps", user = "u", host = "h", port = 5671,
                               vhost = "/", tls = true } },
        { "AMQP://", { scheme = "amqp", user = "guest", host = "localhost", port = 5672,
                       vhost = "/", tls = false } },
        { "amqp://us%40er:p%3Ass@[::1]:5673/v%2Fh", { scheme = "amqp", user = "us@er",
                                                     host = "::1", port = 5673,
                                                     vhost = "v/h", tls = false } },
        { "amqp://u:p:q@h/x", { scheme = "amqp", user = "u", host = "h", port = 5672,
                                vhost = "x", tls = false } },
        { "amqp://u:p@ss@h/x", { scheme = "amqp", user = "u", host = "h", port = 5672,
                                 vhost = "x", tls = false } },
    }
    for _, c in ipairs(cases) do T.eq(amqp.parse_url(c[1]), c[2], c[1]) end
    local bad = {
        { "http://h/", "expected amqp://... or amqps://..." },
        { "amqp:/h", "expected amqp://... or amqps://..." },
        { "amqp://h:0/", "bad port" },
        { "amqp://h:65536/", "bad port" },
        { "amqp://h:/", "bad port" },
        { "amqp://u:secret@h:x1/", "bad port" },
        { "amqp://h/a/b", "a '/' in the vhost must be written %2f" },
        { "amqp://h/a@b", "an '@' in the vhost must be written %40" },
        { "amqp://h/%zz", "bad percent-encoding or NUL byte" },
        { "amqp://h/%2", "bad percent-encoding or NUL byte" },
        { "amqp://h/%00", "bad percent-encoding or NUL byte" },
        { "amqp://h\0/", "NUL byte in the URL" },
        { "amqp://h/v?heartbeat=5",
          "query strings and fragments are not supported (use the options table)" },
        { "amqp://::1/", "IPv6 addresses must be written in brackets" },
        { "amqp://[::1/", "bad IPv6 address" },
    }
    for _, c in ipairs(bad) do
        T.eq({ amqp.parse_url(c[1]) }, { nil, "amqp.parse_url: invalid URL: " .. c[2] }, c[1])
    end
    T.err(function() amqp.parse_url({}) end,
          E("bad argument #1 to 'parse_url' (string expected, got table)"))
end)

T.test("connect failures", function()
    T.eq({ amqp.connect("amqp://u:secret@h:x/") },
         { nil, "amqp.connect: invalid URL: bad port" })
    local bad = URL:gsub(":[^:@]*@", ":wrong-secret@", 1)
    local c, err = amqp.connect(bad)
    T.eq({ c, err }, { nil, "amqp.connect: " .. TARGET
                            .. ": login refused (ACCESS_REFUSED) for user '" .. U.user .. "'" })
    T.ok(not err:find("wrong-secret", 1, true) and not err:find(PASSWORD, 1, true), "no password")
    T.eq({ amqp.connect((URL:gsub("/[^/]*$", "/nope"))) },
         { nil, "amqp.connect: " .. TARGET .. ": vhost 'nope' not found or not permitted" })
    local closed_port = tonumber(os.getenv("LPROC_PORT_BASE")) + 1
    T.eq({ amqp.connect("amqp://u:" .. PASSWORD .. "@127.0.0.1:" .. closed_port .. "/") },
         { nil, "amqp.connect: 127.0.0.1:" .. closed_port .. ": connection refused" })
    local none, why = amqp.connect("amqp://u:p@no-such-host.invalid:5672/")
    T.eq(none, nil)
    T.ok(why:find("^amqp%.connect: no%-such%-host%.invalid:5672: cannot resolve host: "), why)
end)

T.test("connect misuse raises", function()
    T.err(function() amqp.connect({}) end,
          E("bad argument #1 to 'connect' (string expected, got table)"))
    T.err(function() amqp.connect(URL, 5) end,
          E("bad argument #2 to 'connect' (table expected, got number)"))
    T.err(function() amqp.connect(URL, { heartbeats = 5 }) end,
          E("amqp.connect: unknown option 'heartbeats'"))
    T.err(function() amqp.connect(URL, { heartbeat = "5" }) end,
          E("amqp.connect: option 'heartbeat' must be an integer in 0..65535"))
    T.err(function() amqp.connect(URL, { verify = 1 }) end,
          E("amqp.connect: option 'verify' must be a boolean"))
    T.err(function() amqp.connect(URL, { cert = "c.pem" }) end,
          E("amqp.connect: options 'cert' and 'key' go together"))
end)

T.test("connection basics: tostring, is_open, close twice, closed handle raises", function()
    local c = connect({ name = "amqp_test", heartbeat = 10, timeout = 5, frame_max = 65536 })
    T.eq(tostring(c),
         "amqp.connection (amqp://" .. U.user .. "@" .. TARGET .. "/" .. U.vhost .. ")")
    T.ok(not tostring(c):find(PASSWORD, 1, true), "no password in tostring")
    T.eq(c:is_open(), true)
    T.eq(c:stats(), { published = 0, confirmed = 0, nacked = 0, returned = 0, received = 0 })
    T.eq(c:close(), true)
    T.eq(c:close(), true)
    T.eq(c:is_open(), false)
    T.eq(tostring(c), "amqp.connection (closed)")
    T.err(function() c:publish("", "q", "x") end,
          E("amqp.publish: connection is closed"))
    T.err(function() c:receive(0) end,
          E("amqp.receive: connection is closed"))
    T.err(function() c:stats() end,
          E("amqp.stats: connection is closed"))
    do
        local c2 <close> = connect()
        T.eq(c2:is_open(), true)
    end
end)

T.test("method misuse raises", function()
    local c <close> = connect()
    T.err(function() c:publish("", "q", {}) end,
          E("bad argument #3 to 'publish' (string expected, got table)"))
    T.err(function() c:publish(("x"):rep(256), "q", "b") end,
          E("bad argument #1 to 'publish' (longer than 255 bytes)"))
    T.err(function() c:publish("", "q", "b", { priority = 300 }) end,
          E("amqp.publish: property 'priority' must be an integer 0..255"))
    T.err(function() c:publish("", "q", "b", { colour = "red" }) end,
          E("amqp.publish: unknown property 'colour'"))
    T.err(function() c:publish("", "q", "b", { message_id = 5 }) end,
          E("amqp.publish: property 'message_id' must be a string"))
    T.err(function() c:publish("", "q", "b", { headers = { f = print } }) end,
          E("amqp.publish: a field value cannot be a function"))
    T.err(function() c:publish("", "q", "b", { headers = { [1] = 1, x = 2 } }) end,
          E("amqp.publish: tables must be arrays or have only string keys"))
    T.err(function() c:queue_declare("q", { durable = "yes" }) end,
          E("amqp.queue_declare: option 'durable' must be a boolean"))
    T.err(function() c:queue_declare("q", { color = 1 }) end,
          E("amqp.queue_declare: unknown option 'color'"))
    T.err(function() c:qos(-1) end,
          E("bad argument #1 to 'qos' (prefetch count must be 0..65535)"))
    T.err(function() c:receive(-1) end,
          E("bad argument #1 to 'receive' (timeout must be 0..1e9 seconds)"))
    T.err(function() c:receive_batch(0, 1) end,
          E("bad argument #1 to 'receive_batch' (must be positive)"))
    T.err(function() c:ack(1) end,
          E("bad argument #1 to 'ack' (unknown delivery tag)"))
    T.err(function() c:ack(0) end,
          E("bad argument #1 to 'ack' (delivery tag 0 needs multiple)"))
    T.err(function() c.publish(42) end,
          E("bad argument #1 to 'publish' (lproc.amqp.connection expected, got number)"))
    -- the failed calls left the connection usable
    T.eq(select(2, c:queue_declare("", { exclusive = true, durable = false })), 0)
end)

T.test("declare, bind, purge, delete", function()
    local c <close> = connect()
    T.eq(c:exchange_declare("amqp-test-x", "topic", { durable = false, auto_delete = false }), true)
    T.eq(c:exchange_declare("amqp-test-x", "topic", { passive = true }), true)
    local q = fresh_queue(c, "amqp-test-bind")
    T.eq(c:queue_bind(q, "amqp-test-x", "logs.#"), true)
    assert(c:confirm_select())
    local last
    for i = 1, 3 do last = assert(c:publish("amqp-test-x", "logs.a", "m" .. i)) end
    assert(c:publish("amqp-test-x", "other", "not routed"))
    wait_confirms(c, last + 1)
    T.eq(ready(c, q), 3)
    T.eq(c:queue_purge(q), 3)
    T.eq(ready(c, q), 0)
    T.eq(c:queue_unbind(q, "amqp-test-x", "logs.#"), true)
    assert(c:publish("amqp-test-x", "logs.a", "after unbind"))
    T.eq(c:publish("", q, "direct"), last + 3)
    wait_confirms(c, last + 3)
    T.eq(c:queue_delete(q), 1)
    T.eq(c:exchange_delete("amqp-test-x"), true)
    -- server-named queue
    local name, n, consumers = c:queue_declare("", { exclusive = true, durable = false })
    T.ok(name:match("^amq%.gen%-"), name)
    T.eq({ n, consumers }, { 0, 0 })
    T.eq({ c:queue_declare("amqp-test-none", { passive = true }) },
         { nil, "amqp.queue_declare: NOT_FOUND - no queue 'amqp-test-none' in vhost '"
                .. U.vhost .. "'", 404 })
end)

T.test("quorum queue declare", function()
    local c <close> = connect()
    local q = "amqp-test-quorum"
    c:queue_delete(q)
    T.eq({ c:queue_declare(q, { arguments = { ["x-queue-type"] = "quorum",
                                              ["x-delivery-limit"] = 5 } }) }, { q, 0, 0 })
    publish_all(c, q, { "a", "b" })
    T.eq(ready(c, q), 2)
    T.eq(c:queue_delete(q), 2)
end)

T.test("round trip with every property and header type", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-props")
    local headers = {
        s = "text", bin = "a\0b\255\"'", empty_s = "", i = 42, neg = -7,
        big = math.maxinteger, min = math.mininteger, f = 1.25, tiny = 1e-300, yes = true,
        no = false, arr = { 1, "two", 3.5, { 4 }, { k = "v" } }, empty = {},
        nested = { a = { b = { c = "deep" } }, n = 1 }, void = amqp.null,
    }
    local props = {
        message_id = "m-1", content_type = "text/plain", content_encoding = "identity",
        correlation_id = "corr-9", type = "access-log", app_id = "lproc-test",
        user_id = U.user, reply_to = "replies", expiration = "600000", priority = 5,
        timestamp = 1700000000, persistent = true, headers = headers,
    }
    T.eq(c:publish("", q, "body-1", props), 0)
    T.eq(c:publish("", q, "body-2", { persistent = false }), 0)
    local tag = assert(c:consume(q, { tag = "props-consumer" }))
    T.eq(tag, "props-consumer")
    local m = c:receive(5)
    local want = {
        body = "body-1", delivery_tag = 1, redelivered = false, exchange = "", routing_key = q,
        consumer_tag = "props-consumer",
    }
    for k, v in pairs(props) do want[k] = v end
    T.eq(m, want)
    T.eq(math.type(m.headers.big), "integer")
    T.eq(math.type(m.headers.f), "float")
    T.eq(c:receive(5), { body = "body-2", delivery_tag = 2, redelivered = false, exchange = "",
                         routing_key = q, consumer_tag = "props-consumer", persistent = false })
    T.eq(c:ack(2, true), true)
    T.eq(c:cancel(tag), true)
    T.eq(c:stats().received, 2)
end)

T.test("body bytes are exact (NUL, invalid UTF-8, quotes, empty, 1 MB, 16 MB)", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-bodies")
    local mb = {}
    for i = 0, 1024 * 1024 - 1 do mb[#mb + 1] = string.char((i * 7 + 3) % 256) end
    mb = table.concat(mb)
    local bodies = { "a\0b\0", "\xff\xfe\xc3\x28", "\"quoted\" 'single' \\", "", mb,
                     ("0123456789abcdef"):rep(1024 * 1024), "after big" }
    publish_all(c, q, bodies)
    T.eq(ready(c, q), #bodies)
    assert(c:qos(2))
    assert(c:consume(q, { no_ack = true }))
    for i, b in ipairs(bodies) do
        local m = c:receive(10)
        T.ok(m, "message " .. i)
        T.eq(#m.body, #b, "length of body " .. i)
        T.ok(m.body == b, "body " .. i .. " differs")
    end
end)

T.test("confirms: 10k persistent messages through a window", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-confirms", { durable = true })
    T.eq(c:publish("", q, "before confirm mode"), 0)
    T.eq(c:confirm_select(), true)
    T.eq(c:confirms(0), 0)
    local window, upto, seq, waits = 2000, 0, 0, 0
    for i = 1, 10000 do
        seq = c:publish("", q, string.format("%05d %s", i, ("x"):rep(154)),
                        { message_id = tostring(i) })
        T.eq(seq, i, "seqno")
        if seq - upto >= window then
            local nacked
            upto, nacked = c:confirms(10)
            T.eq(nacked, nil, "nacked")
            waits = waits + 1
            T.ok(seq - upto < window, "confirms(10) waited for progress")
        elseif i % 300 == 0 then
            upto = c:confirms()
        end
    end
    T.eq(wait_confirms(c, 10000), 10000)
    T.eq({ c:confirms(0) }, { 10000, nil })
    T.eq(c:stats(), { published = 10001, confirmed = 10000, nacked = 0, returned = 0,
                      received = 0 })
    T.eq(ready(c, q), 10001)
    T.eq(c:queue_delete(q), 10001)
end)

T.test("confirms arriving out of order (mixed queue types)", function()
    local c <close> = connect()
    local qt = fresh_queue(c, "amqp-test-ooo-transient")
    local qd = fresh_queue(c, "amqp-test-ooo-durable", { durable = true })
    c:queue_delete("amqp-test-ooo-quorum")
    local qq = assert(c:queue_declare("amqp-test-ooo-quorum",
                                      { arguments = { ["x-queue-type"] = "quorum" } }))
    assert(c:confirm_select())
    local targets = { { qt, { persistent = false } }, { qd }, { qq } }
    local prev = 0
    for i = 1, 3000 do
        local t = targets[i % 3 + 1]
        T.eq(c:publish("", t[1], "m" .. i, t[2]), i)
        if i % 100 == 0 then
            local upto, nacked = c:confirms(0)
            T.ok(upto >= prev and upto <= i, "upto " .. upto .. " after " .. i)
            T.eq(nacked, nil)
            prev = upto
        end
    end
    T.eq(wait_confirms(c, 3000), 3000)
    T.eq(c:stats(), { published = 3000, confirmed = 3000, nacked = 0, returned = 0, received = 0 })
    T.eq({ ready(c, qt), ready(c, qd), ready(c, qq) }, { 1000, 1000, 1000 })
    for _, q in ipairs({ qt, qd, qq }) do T.eq(c:queue_delete(q), 1000) end
end)

T.test("consume with prefetch and multiple ack; nack requeues; reject drops", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-consume")
    local bodies = {}
    for i = 1, 10 do bodies[i] = "m" .. i end
    publish_all(c, q, bodies)
    T.eq(c:qos(5), true)
    local tag = assert(c:consume(q))
    local got = {}
    for i = 1, 5 do
        local m = c:receive(5)
        T.eq({ m.body, m.delivery_tag, m.redelivered, m.consumer_tag }, { "m" .. i, i, false, tag })
        got[#got + 1] = m
    end
    T.eq(c:receive(0.3), false, "prefetch limit reached")
    T.eq(c:ack(got[5].delivery_tag, true), true)
    for i = 6, 10 do
        local m = c:receive(5)
        T.eq({ m.body, m.delivery_tag }, { "m" .. i, i })
    end
    T.eq(c:receive(0), false)
    -- nack m9 and m10 (multiple, requeue): they come back redelivered after ack of m6..m8
    T.eq(c:ack(8, true), true)
    T.eq(c:nack(10, true), true)
    local r1, r2 = c:receive(5), c:receive(5)
    T.eq({ r1.body, r1.redelivered, r1.delivery_tag }, { "m9", true, 11 })
    T.eq({ r2.body, r2.redelivered, r2.delivery_tag }, { "m10", true, 12 })
    T.eq(c:nack(11, false, true), true)
    local r3 = c:receive(5)
    T.eq({ r3.body, r3.redelivered, r3.delivery_tag }, { "m9", true, 13 })
    T.eq(c:reject(13, false), true)
    T.eq(c:reject(12), true)
    local r4 = c:receive(5)
    T.eq({ r4.body, r4.redelivered }, { "m10", true })
    T.eq(c:ack(r4.delivery_tag), true)
    T.eq(c:cancel(tag), true)
    T.eq(ready(c, q), 0)
    T.eq(c:stats().received, 14)
end)

T.test("receive_batch takes what has arrived, up to max", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-batch")
    local bodies = {}
    for i = 1, 250 do bodies[i] = "b" .. i end
    publish_all(c, q, bodies)
    assert(c:qos(1000))
    assert(c:consume(q))
    local all, batches, last = {}, 0, nil
    for _ = 1, 250 do
        if #all >= 250 then break end
        local batch, err = c:receive_batch(100, 5)
        T.ok(batch, err)
        T.ok(#batch >= 1 and #batch <= 100, "batch size " .. #batch)
        batches = batches + 1
        for _, m in ipairs(batch) do all[#all + 1] = m end
        last = batch[#batch].delivery_tag
    end
    T.ok(batches >= 3, "at least 3 batches")
    for i, m in ipairs(all) do T.eq({ m.body, m.delivery_tag }, { "b" .. i, i }) end
    T.eq(c:ack(last, true), true)
    T.eq(c:receive_batch(10, 0.2), {})
    T.eq(c:receive_batch(10, 0), {})
end)

T.test("deliveries read by confirms() wait in the inbox for receive*()", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-inbox")
    assert(c:consume(q, { no_ack = true }))
    local bodies = {}
    for i = 1, 100 do bodies[i] = "i" .. i end
    publish_all(c, q, bodies)
    os.execute("sleep 0.3")
    T.eq({ c:confirms(0) }, { 100, nil })
    local batch = c:receive_batch(1000, 0)
    T.eq(#batch, 100)
    for i, m in ipairs(batch) do T.eq(m.body, "i" .. i) end
    T.eq(c:stats().received, 100)
end)

T.test("PRECONDITION_FAILED: nil, err, 406 and the connection still works", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-precond", { durable = true })
    T.eq(c:confirm_select(), true)
    T.eq(c:publish("", q, "one"), 1)
    T.eq({ c:queue_declare(q, { arguments = { ["x-queue-type"] = "quorum" } }) },
         { nil, "amqp.queue_declare: PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for "
                .. "queue '" .. q .. "' in vhost '" .. U.vhost .. "': received the value 'quorum' "
                .. "of type 'longstr' but current is none", 406 })
    -- the channel was reopened: usable, but without confirm mode
    T.eq({ c:queue_declare(q) }, { q, 1, 0 })
    T.eq(c:publish("", q, "two"), 0)
    T.eq(c:confirm_select(), true)
    T.eq(c:publish("", q, "three"), 2)
    local upto = c:confirms(5)
    T.eq(upto, 2)
    T.eq(c:stats().confirmed + c:stats().nacked, 2)
    T.eq(c:queue_delete(q), 3)
end)

T.test("asynchronous channel error: reported by confirms(), unconfirmed seqnos nacked", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-async")
    assert(c:confirm_select())
    publish_all(c, q, { "ok" })
    T.eq(c:publish("amqp-test-no-such-exchange", "k", "lost"), 2)
    local a, b, code = c:confirms(5)
    T.eq({ a, b, code }, { nil, "amqp.confirms: NOT_FOUND - no exchange "
                               .. "'amqp-test-no-such-exchange' in vhost '" .. U.vhost .. "'",
                           404 })
    T.eq({ c:confirms(0) }, { 2, { 2 } })
    T.eq({ c:confirms(0) }, { 2, nil })
    T.eq(c:stats(), { published = 2, confirmed = 1, nacked = 1, returned = 0, received = 0 })
    T.eq(c:publish("", q, "no confirm mode"), 0)
    T.eq(c:queue_delete(q), 2)
end)

T.test("mandatory unroutable message is returned and counted", function()
    local c <close> = connect()
    assert(c:confirm_select())
    local seq = c:publish("", "amqp-test-nowhere", "x", { mandatory = true })
    wait_confirms(c, seq)
    T.eq(c:stats().returned, 1)
    T.eq(c:stats().confirmed, 1)
end)

T.test("a delivery tag from before a channel reset is stale; the message comes back", function()
    local c <close> = connect()
    local q = fresh_queue(c, "amqp-test-stale")
    publish_all(c, q, { "s1" })
    assert(c:consume(q))
    local m = c:receive(5)
    T.eq({ m.body, m.delivery_tag }, { "s1", 1 })
    local ok, err, code = c:queue_declare(q, { durable = true })
    T.eq({ ok, code }, { nil, 406 })
    T.ok(err:find("^amqp%.queue_declare: PRECONDITION_FAILED %- inequivalent arg 'durable'"), err)
    T.eq({ c:ack(1) }, { nil, "amqp.ack: delivery tag 1 is stale: the channel was reset since "
                              .. "(the broker requeued the message)" })
    T.eq(c:receive(0.2), false, "the consumer died with the channel")
    assert(c:consume(q))
    local again = c:receive(5)
    T.eq({ again.body, again.redelivered, again.delivery_tag }, { "s1", true, 2 })
    T.eq(c:ack(2), true)
end)

T.test("a consumer cancelled by the broker is reported", function()
    local c <close> = connect()
    local other <close> = connect()
    local q = fresh_queue(c, "amqp-test-cancel")
    assert(c:consume(q, { tag = "doomed" }))
    T.eq(other:queue_delete(q), 0)
    T.eq({ c:receive(5) }, { nil, "amqp.receive: consumer 'doomed' was cancelled by the broker" })
    T.eq(c:receive(0), false)
    T.eq(c:is_open(), true)
end)

T.test("heartbeats are serviced while waiting", function()
    local c <close> = connect({ heartbeat = 1 })
    local q = fresh_queue(c, "amqp-test-heartbeat")
    assert(c:consume(q, { no_ack = true }))
    T.eq(c:receive(3.5), false)
    T.eq(c:is_open(), true)
    T.eq(c:publish("", q, "still alive"), 0)
    T.eq(c:receive(5).body, "still alive")
end)

T.test("amqps: certificate checks and TLS failures", function()
    local base = tonumber(os.getenv("LPROC_PORT_BASE"))
    local closed_port = base + 1
    T.eq({ amqp.connect("amqps://u:p@127.0.0.1:" .. closed_port .. "/", { timeout = 2 }) },
         { nil, "amqp.connect: 127.0.0.1:" .. closed_port .. ": connection refused" })
    local tmp = T.env("LPROC_TEST_TMP") .. "/amqp-tls"
    T.eq({ amqp.connect("amqps://u:p@127.0.0.1:" .. closed_port .. "/",
                        { cacert = tmp .. "/missing.pem" }) },
         { nil, "amqp.connect: 127.0.0.1:" .. closed_port .. ": cannot load CA certificates from '"
                .. tmp .. "/missing.pem'" })
    if not os.execute("openssl version >/dev/null 2>&1") then
        io.write("       (no openssl command: the TLS server part is skipped)\n")
        return
    end
    -- a TLS server that does not speak AMQP, with a self-signed certificate for "localhost"
    local port = base + 8
    assert(os.execute("mkdir -p " .. tmp .. " && cd " .. tmp .. " && openssl req -x509 "
        .. "-newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 -subj /CN=localhost "
        .. "-addext subjectAltName=DNS:localhost >/dev/null 2>&1"))
    assert(os.execute("cd " .. tmp .. " && { openssl s_server -accept 127.0.0.1:" .. port
        .. " -cert cert.pem -key key.pem -quiet </dev/null >server.log 2>&1 &"
        .. " echo $! >server.pid; }"))
    local pidf = assert(io.open(tmp .. "/server.pid"))
    local pid = assert(tonumber(pidf:read("l")))
    pidf:close()
    local stop <close> = setmetatable({}, { __close = function()
        os.execute("kill " .. pid .. " 2>/dev/null")
    end })
    local function try(host, opts)
        opts.timeout = 2
        return { amqp.connect("amqps://u:p@" .. host .. ":" .. port .. "/", opts) }
    end
    for _ = 1, 100 do   -- until the server listens
        local r = try("127.0.0.1", { verify = false })
        if not r[2]:find("connection refused", 1, true) then break end
        os.execute("sleep 0.05")
    end
    local where = "amqp.connect: 127.0.0.1:" .. port .. ": "
    T.eq(try("127.0.0.1", {}), { nil, where .. "SSL peer cert verification failed" })
    T.eq(try("127.0.0.1", { cacert = tmp .. "/cert.pem" }),
         { nil, where .. "SSL hostname verification failed" })
    -- the TLS handshake succeeds; then the server is no AMQP broker
    local r = try("localhost", { cacert = tmp .. "/cert.pem" })
    T.eq(r[1], nil)
    T.ok(r[2] == "amqp.connect: localhost:" .. port .. ": the broker closed the connection "
                 .. "during the handshake"
         or r[2] == "amqp.connect: localhost:" .. port .. ": handshake timed out", r[2])
end)

-- Last: stops and resumes the broker.
T.test("broker restart: connection lost, then a new connection works", function()
    local c = connect()
    local consumer = connect()
    local q = fresh_queue(c, "amqp-test-restart", { durable = true })
    local bodies = {}
    for i = 1, 100 do bodies[i] = "persist " .. i end
    publish_all(c, q, bodies, { persistent = true })
    local servers = os.getenv("LPROC_ROOT") .. "/tests/servers.sh"
    T.ok(os.execute(servers .. " stop rabbitmq >/dev/null 2>&1"), "stop rabbitmq")
    -- whatever fails below, the broker comes back for anything that may follow
    local resume <close> = setmetatable({}, { __close = function()
        if not amqp.connect(URL) then os.execute(servers .. " resume rabbitmq >/dev/null 2>&1") end
    end })

    T.eq({ consumer:receive(10) }, { nil, "amqp.receive: connection lost: CONNECTION_FORCED - "
                                         .. "broker forced connection closure with reason "
                                         .. "'shutdown'", 320 })
    T.eq(consumer:is_open(), false)
    T.eq({ consumer:receive(0) }, { nil, "amqp.receive: connection is closed" })
    T.eq({ consumer:qos(1) }, { nil, "amqp.qos: connection is closed" })

    local ok, err, sent = nil, nil, 0
    for _ = 1, 200 do
        ok, err = c:publish("", q, "into the void")
        if not ok then break end
        sent = sent + 1
        os.execute("sleep 0.01")
    end
    T.eq(ok, nil)
    T.ok(err:find("^amqp%.publish: connection lost: "), err)
    T.eq(c:is_open(), false)
    T.eq({ c:publish("", q, "x") }, { nil, "amqp.publish: connection is closed" })
    T.eq({ c:confirms(0) }, { nil, "amqp.confirms: connection is closed" })
    T.eq({ c:queue_declare(q) }, { nil, "amqp.queue_declare: connection is closed" })
    T.eq(c:stats(), { published = 100 + sent, confirmed = 100, nacked = 0, returned = 0,
                      received = 0 })
    T.eq(tostring(c), "amqp.connection (closed)")
    T.eq(c:close(), true)
    T.eq(consumer:close(), true)
    local refused = { amqp.connect(URL) }
    T.eq(refused, { nil, "amqp.connect: " .. TARGET .. ": connection refused" })

    T.ok(os.execute(servers .. " resume rabbitmq >/dev/null 2>&1"), "resume rabbitmq")
    local c2 <close> = connect()
    T.eq({ c2:queue_declare(q, { passive = true }) }, { q, 100, 0 }, "persistent messages kept")
    assert(c2:consume(q))
    local batch = {}
    for _ = 1, 100 do
        if #batch >= 100 then break end
        local b = assert(c2:receive_batch(100, 5))
        for _, m in ipairs(b) do batch[#batch + 1] = m end
    end
    for i, m in ipairs(batch) do T.eq(m.body, "persist " .. i) end
    T.eq(c2:ack(batch[#batch].delivery_tag, true), true)
    T.eq(c2:queue_delete(q), 0)
end)

T.done()
