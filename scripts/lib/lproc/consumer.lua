-- lproc.consumer: the runtime shared by lake.lua and clean.lua.
--
-- It consumes one queue with a prefetch, turns each message into lines (a single line, or a
-- batch message of many), lets the script turn each line into rows, and writes the rows in
-- batches: one transaction per batch (by count and by time), then one multiple-ack for the
-- batch's messages, only after the commit. Inserts are idempotent on id, so a redelivered
-- message never makes a second row. A lost broker or database is waited for with backoff;
-- nothing is acked before its rows are committed.
local amqp = require "lproc.amqp"
local mysql = require "lproc.mysql"
local sha256 = require "lproc.sha256"
local reader = require "lproc.reader"
local sys = require "lproc.sys"
local config = require "lproc.config"
local broker = require "lproc.broker"
local util = require "lproc.util"

local M = {}

M.OPTIONS = {
    ["--prefetch"] = "count", ["--batch-rows"] = "count", ["--batch-ms"] = "number",
    ["--idle-exit"] = "number", ["--quorum"] = "flag", ["--connect-timeout"] = "number",
    ["--progress"] = "number", ["--help"] = "flag",
}

M.OPTIONS_HELP = [[
  --prefetch N        unacknowledged lines the broker may send ahead (default 2000; with
                      batch messages, PREFETCH / lines-per-message messages)
  --batch-rows N      rows per transaction (default 500)
  --batch-ms MS       longest wait before a partial batch is written (default 200)
  --idle-exit S       exit 0 once the queue has been idle S seconds and all is committed
  --quorum            declare the queue as a quorum queue
  --connect-timeout S how long to wait for the servers at start-up (default 10)
  --progress S        seconds between progress lines on stderr (default 5; 0 = none)
  --help

environment: LPROC_AMQP_URL and LPROC_MYSQL_URL (or the original project's RABBIT_USER,
RABBIT_PASSWORD, RABBIT_HOST, RABBIT_PORT, RABBIT_VHOST, MYSQL_USER, MYSQL_PASSWORD,
MYSQL_DATABASE, HOST, PORT), also read from ./.env.
]]

local is_hex = sha256.is_hex
local mtype = math.type

-- Database errors that waiting (and a reconnect) cures, as opposed to errors in the data: a
-- lost connection, a lock or deadlock with another session, a read-only or full server.
local function db_lost(code)
    return code == nil or mysql.is_transient_error(code)
end

-- M.run(spec): runs a consumer until a signal or --idle-exit; never returns.
-- spec.name      "lake" / "clean" (progress lines, queue choice)
-- spec.opts      parsed options (see M.OPTIONS)
-- spec.tables    { {name=, columns={...}}, ... } the batches to fill, keyed by name in `rows`
-- spec.setup(db) -> true | nil, err          create the tables (runs after every connect)
-- spec.line(rows, line, id, source, offset, truncated)   turn one line into rows:
--                rows[name]:add(...) for the table `name`
-- spec.fallback(rows, line, id, err)  a line whose rows the database refused (not an outage):
--                add rows that will go in (e.g. a reject), or raise to stop
-- spec.reload() -> true | nil, err   SIGHUP (optional)
-- spec.counters() -> text for the progress line (optional)
function M.run(spec)
    local NAME, opts = spec.name, spec.opts
    local log = util.logger(NAME)
    -- Four batches' worth of prefetch: the broker goes on delivering while a batch commits,
    -- so messages do not wait in the queue (which costs the broker more).
    local PREFETCH = opts.prefetch or 2000
    -- The AMQP prefetch count is 16 bits.
    if PREFETCH > 65535 then util.die(NAME, "--prefetch is at most 65535, got %d", PREFETCH) end
    local BATCH_ROWS = opts.batch_rows or 500
    local BATCH_SECS = (opts.batch_ms or 200) / 1000
    local IDLE_EXIT = opts.idle_exit
    local PROGRESS = opts.progress or 5
    local QUEUE = broker.QUEUES[NAME]

    config.check_dotenv(log)
    local amqp_url, why = config.amqp_url()
    if not amqp_url then util.die(NAME, "%s", why) end
    local mysql_url
    mysql_url, why = config.mysql_url()
    if not mysql_url then util.die(NAME, "%s", why) end

    local signals = {}
    sys.signals("TERM", "INT", "HUP")

    local rows, batches = {}, {}
    for i, t in ipairs(spec.tables) do
        -- LOAD DATA LOCAL where the server allows it (cheaper for the server than INSERT),
        -- else multi-row INSERTs; both skip rows whose id is already there.
        batches[i] = mysql.batch(t.name, t.columns, { on_duplicate = "ignore", load = true })
        rows[t.name] = batches[i]
    end

    local status = "running"
    local n_msgs, n_lines, n_batches, t_start = 0, 0, 0, sys.now()
    -- When the last message arrived, or a server came back: --idle-exit counts from there, so
    -- that a queue still recovering after a broker restart is not taken for an idle one.
    local last_msg = t_start

    -- Connecting -------------------------------------------------------------------------
    local mq, db
    -- The prefetch counts lines, so the memory in flight stays bounded whatever the producer's
    -- --batch. The consumer may have PREFETCH messages unacknowledged; while messages hold
    -- several lines, a channel-wide limit lowers that to PREFETCH / (lines of the largest
    -- message of the last delivery), and to PREFETCH / 100 until a first delivery shows how
    -- many lines a message holds. (RabbitMQ applies a new per-consumer prefetch only to
    -- consumers started after it, a channel-wide one at once; that one is lifted for
    -- single-line messages, because it costs the broker work for every message.)
    local chan_limit = math.max(2, PREFETCH // 100)      -- 0: none
    local function msgs_ahead() return chan_limit > 0 and chan_limit or PREFETCH end

    local function db_connect(forever)
        local back = util.backoff(0.2, 5)
        local deadline = sys.now() + (opts.connect_timeout or 10)
        while true do
            local c, err, code = mysql.connect(mysql_url, { connect_timeout = 5, local_infile = true })
            if c then
                local ok, serr = spec.setup(c)
                if ok then return c end
                c:close()
                err = serr
                if not forever then util.die(NAME, "%s", serr) end
            elseif not db_lost(code) then
                util.die(NAME, "cannot connect to MySQL: %s", err)
            end
            local d = back.next()
            if not forever and sys.now() + d > deadline then
                util.die(NAME, "cannot connect to MySQL: %s", err)
            end
            status = string.format("waiting for MySQL: %s", err)
            if util.sleep_unless_signal(d, signals) then
                if forever then return nil end
                util.die(NAME, "stopped while waiting for MySQL")
            end
        end
    end

    local function mq_connect(forever)
        while true do
            local c, err = broker.connect(amqp_url, {
                startup = opts.connect_timeout or 10, forever = forever, pending = signals,
                status = function(t) status = t end,
            })
            if not c and util.stopping(signals) then
                if forever then return nil end
                util.die(NAME, "stopped while waiting for RabbitMQ")
            end
            if not c then
                util.die(NAME, "cannot connect to RabbitMQ: %s", err)
            end
            local ok
            ok, err = broker.declare(c, NAME, { quorum = opts.quorum })
            if ok then ok, err = c:qos(PREFETCH) end
            if ok then ok, err = c:qos(chan_limit, true) end
            if ok then ok, err = c:consume(QUEUE) end
            if ok then return c end
            c:close()
            if not forever or broker.is_fatal(err) or tostring(err):find("PRECONDITION_FAILED", 1, true) then
                util.die(NAME, "%s", err)
            end
            util.sleep_unless_signal(1, signals)
        end
    end

    -- Messages to lines -------------------------------------------------------------------
    local line_fn, hex, lineid, records = spec.line, sha256.hex, util.lineid, reader.records
    local BATCH_TYPE = broker.BATCH_TYPE

    -- Feeds the lines of one message to fn (spec.line's signature); returns the number of lines.
    local function feed(msg, fn)
        local h = msg.headers
        local source = h and h["x-source"]
        if type(source) ~= "string" then source = nil end   -- from another client: anything
        local body = msg.body
        if msg.content_type == BATCH_TYPE and source then
            local n, pos = 0, 1
            for nxt, off, line in records(body) do   -- stops at a malformed record
                fn(rows, line, lineid(source, off, line), source, off, false)
                n = n + 1
                pos = nxt
            end
            if pos <= #body then
                -- Not a batch after all: keep the whole body as one line rather than lose it.
                local rest = body:sub(pos)
                fn(rows, rest, hex(msg.message_id or "", "\0", pos, "\0", rest), source, nil, false)
                n = n + 1
            end
            return n
        end
        local id = msg.message_id
        if id == nil then
            id = hex(body)
        elseif not is_hex(id) then
            id = hex("message-id\0", id)
        end
        local offset = h and h["x-offset"]
        if mtype(offset) ~= "integer" or offset < 0 then offset = nil end
        fn(rows, body, id, source, offset, h and h["x-truncated"] == true)
        return 1
    end

    -- Writing batches ---------------------------------------------------------------------
    local msgs = {}               -- messages of the current batch (kept for the fallback path)
    local pending_rows = 0
    local batch_started

    local function count_rows()
        local n = 0
        for _, b in ipairs(batches) do n = n + b:count() end
        return n
    end

    local function clear()
        for _, b in ipairs(batches) do b:clear() end
    end

    -- Inserts the current batches in one transaction. -> true | nil, err, code
    local function write()
        local ok, err, code = db:begin()
        if not ok then return nil, err, code end
        for _, b in ipairs(batches) do
            if b:count() > 0 then
                ok, err, code = db:insert(b)
                if not ok then
                    db:rollback()
                    return nil, err, code
                end
            end
        end
        ok, err, code = db:commit()
        if not ok then return nil, err, code end
        return true
    end

    -- Writes the batch until it is in, surviving database outages.
    local function write_until_done()
        local back = util.backoff(0.2, 5)
        while true do
            local ok, err, code = write()
            if ok then return true end
            if mysql.is_setup_error(code) then
                -- Not the data's fault, and no row would go in: stop before any becomes a reject.
                util.die(NAME, "cannot write to MySQL: %s (the tables, grants or settings are not "
                    .. "what %s needs; the batch's messages stay in the queue)", err, NAME)
            end
            if not db_lost(code) then return nil, err, code end
            log("database write failed (%s); reconnecting", err)
            if db then db:close() end
            db = nil
            while not db do
                db = db_connect(true)
                if not db then   -- stopped by a signal
                    util.die(NAME, "stopped while waiting for MySQL; unwritten messages stay in the queue")
                end
            end
            status = "running"
            last_msg = sys.now()
            log("database reconnected")
            back.next()
        end
    end

    -- The database refused the batch for its data: write it line by line, and let the script
    -- replace the rows of a refused line (e.g. by a reject).
    local function one_line(r, line, id, source, offset, truncated)
        clear()
        line_fn(r, line, id, source, offset, truncated)
        local ok, err = write_until_done()
        if not ok then
            clear()
            spec.fallback(r, line, id, err)
            ok, err = write_until_done()
            if not ok then util.die(NAME, "cannot store a line even as a reject: %s", err) end
        end
    end
    local function write_one_by_one()
        for _, msg in ipairs(msgs) do feed(msg, one_line) end
        clear()
    end

    local function flush()
        if #msgs == 0 then return end
        local ok, err = write_until_done()
        if not ok then
            log("the database refused a batch (%s); writing it line by line", err)
            write_one_by_one()
        end
        clear()
        n_batches = n_batches + 1
        -- Rows are committed: now, and only now, the messages are acknowledged.
        if mq then
            local aok, aerr = mq:ack(msgs[#msgs].delivery_tag, true)
            if not aok then
                -- Unacked messages come back after a reconnect; their rows are already in.
                log("ack failed (%s); the broker will deliver these messages again", aerr)
                mq:close()
                mq = nil
            end
        end
        msgs = {}
        pending_rows = 0
        batch_started = nil
    end

    -- Progress ----------------------------------------------------------------------------
    local t_progress = sys.now()
    local function progress(final)
        local now = sys.now()
        if not final and (PROGRESS <= 0 or now - t_progress < PROGRESS) then return end
        t_progress = now
        local dt = now - t_start
        log("%d messages, %d lines, %s%s, %s", n_msgs, n_lines, util.rate(n_lines, dt),
            spec.counters and (", " .. spec.counters()) or "", final and "done" or status)
    end

    -- Main loop ---------------------------------------------------------------------------
    db = db_connect(false)
    mq = mq_connect(false)
    log("consuming %s (prefetch %d, %d rows or %d ms per transaction)", QUEUE, PREFETCH,
        BATCH_ROWS, math.floor(BATCH_SECS * 1000))
    last_msg = sys.now()

    while true do
        local s = sys.signal()
        if s then signals[#signals + 1] = s end
        if #signals > 0 then
            local sig = table.remove(signals, 1)
            if sig == "HUP" and spec.reload then
                flush()
                local ok, err = spec.reload()
                if ok then log("rules reloaded") else log("reload refused, the old rules stay: %s", err) end
            elseif sig ~= "HUP" then
                flush()
                progress(true)
                if mq then mq:close() end
                db:close()
                os.exit(0)
            end
        end

        if not mq then
            status = "waiting for RabbitMQ"
            mq = mq_connect(true)
            if mq then
                status = "running"
                last_msg = sys.now()
                log("broker reconnected")
            end
        end

        if mq then
            local wait = BATCH_SECS
            if batch_started then wait = math.max(0, batch_started + BATCH_SECS - sys.now()) end
            local got, err = mq:receive_batch(math.max(1, BATCH_ROWS - pending_rows), math.min(wait, 0.5))
            if not got then
                log("broker connection lost (%s)", err)
                local lost = mq
                mq = nil
                flush()              -- keep the work: commit what we have; acks are impossible now
                lost:close()
            elseif #got > 0 then
                last_msg = sys.now()
                batch_started = batch_started or last_msg
                local most = 1
                for i = 1, #got do
                    local msg = got[i]
                    msgs[#msgs + 1] = msg
                    local k = feed(msg, line_fn)
                    n_lines = n_lines + k
                    if k > most then most = k end
                end
                local want = most > 1 and math.max(2, PREFETCH // most) or 0
                if want ~= chan_limit and (want == 0 or chan_limit == 0 or want < chan_limit
                        or want >= 2 * chan_limit) then
                    chan_limit = want
                    local ok, qerr = mq:qos(chan_limit, true)
                    if not ok then log("cannot change the prefetch (%s)", qerr) end
                end
                n_msgs = n_msgs + #got
                pending_rows = count_rows()
            end
        end

        local now = sys.now()
        if #msgs > 0 and (pending_rows >= BATCH_ROWS or #msgs >= math.max(1, msgs_ahead() // 2)
                or now - batch_started >= BATCH_SECS) then
            flush()
        end
        progress(false)
        if IDLE_EXIT and #msgs == 0 and mq and now - last_msg >= IDLE_EXIT then
            progress(true)
            mq:close()
            db:close()
            os.exit(0)
        end
    end
end

return M
