-- producer.lua: reads web-server logs line by line and publishes each line to RabbitMQ.
--
--   lproc scripts/producer.lua [options] FILE...
--
-- Each line becomes a persistent message on the topic exchange "logs" (routing key "logs"):
-- body = the line, message_id = the line's id, content_type text/plain, timestamp, headers
-- x-source and x-offset. The id is the SHA-256 of "source NUL offset NUL line", so publishing
-- the same file twice makes no new rows downstream. Publisher confirms are pipelined in a
-- window; the program ends (status 0) only when the broker has confirmed every line.
local sys = require "lproc.sys"
local reader = require "lproc.reader"
local config = require "lproc.config"
local broker = require "lproc.broker"
local util = require "lproc.util"

local NAME = "producer"
local log = util.logger(NAME)

local HELP = [[
usage: lproc scripts/producer.lua [options] FILE...

Publishes every line of each FILE ("-" = standard input; .gz files are read transparently)
to the RabbitMQ topic exchange "logs" with routing key "logs", and declares the exchange and
the durable queues queue-data-lake and queue-data-clean with their bindings.

options:
  --follow            keep reading as the file grows, like tail -F; survives rotation by
                      rename and by copytruncate; one FILE only
  --checkpoint PATH   (with --follow) where the confirmed position is kept
                      (default: .lproc-state/<id of the source>.checkpoint)
  --source NAME       source name used in ids and x-source (default: the absolute path)
  --batch N           up to N lines per message (content type application/vnd.lproc.lines+v1)
  --window N          unconfirmed lines allowed in flight (default 4096)
  --quorum            declare the queues as quorum queues
  --max-line BYTES    longer lines are cut to BYTES and flagged (default 4194304)
  --connect-timeout S how long to wait for the broker at start-up (default 10)
  --progress S        seconds between progress lines on stderr (default 5; 0 = none)
  --help

environment: LPROC_AMQP_URL (or RABBIT_USER, RABBIT_PASSWORD, RABBIT_HOST, RABBIT_PORT,
RABBIT_VHOST), also read from ./.env.
]]

local opts, files = util.getopt(arg, {
    ["--follow"] = "flag", ["--checkpoint"] = "string", ["--source"] = "string",
    ["--batch"] = "count", ["--window"] = "count", ["--quorum"] = "flag",
    ["--max-line"] = "count", ["--connect-timeout"] = "number", ["--progress"] = "number",
    ["--help"] = "flag",
}, NAME)
if opts.help then io.stdout:write(HELP); os.exit(0) end
if #files == 0 then util.die(NAME, "no input file given (try --help)") end
if opts.follow and #files ~= 1 then util.die(NAME, "--follow takes exactly one FILE") end
if opts.source and #files > 1 then util.die(NAME, "--source needs exactly one FILE") end
if opts.follow and files[1] == "-" then util.die(NAME, "--follow needs a file, not standard input") end

local BATCH = opts.batch or 1
-- The window counts lines: in batch mode it is that many lines' worth of messages, so the
-- memory held for unconfirmed messages does not grow with --batch.
local WINDOW = math.max(2, math.floor((opts.window or 4096) / BATCH))
local MAX_LINE = opts.max_line or 4 * 1024 * 1024
local PROGRESS = opts.progress or 5
local EXCHANGE, KEY = broker.EXCHANGE, broker.ROUTING_KEY

config.check_dotenv(log)
local url, why = config.amqp_url()
if not url then util.die(NAME, "%s", why) end

-- Check the inputs before touching the broker: a missing file is a mistake, not an outage.
local inputs = {}
for i, f in ipairs(files) do
    local src = opts.source
    if not src then src = f == "-" and "stdin" or sys.realpath(f) end
    if not src then
        local _, err = sys.realpath(f)
        util.die(NAME, "%s", (err:gsub("^sys%.realpath:", "cannot read")))
    end
    local r, err = reader.open(f, { max_line = MAX_LINE })
    if not r then util.die(NAME, "%s", (err:gsub("^reader%.open:", "cannot read"))) end
    inputs[i] = { path = f, source = src, reader = r }
end

local signals = {}
sys.signals("TERM", "INT")

---------------------------------------------------------------------------------------------
-- Publishing with confirms. Every message waits in `pend` (by sequence number) until the
-- broker confirms it; a nack or a lost connection publishes the pending messages again.

local conn
local seq_next = 1            -- sequence number the next publish will get
local confirmed = 0           -- every seq <= confirmed is confirmed
-- Message s, until confirmed: pend_body[s], pend_end[s] (the stream offset after its last
-- line) and pend_meta[s]: a batch message's properties, or a single line's offset, with its
-- source in pend_src[s] and pend_cut[s] = true when it was truncated. A single line's
-- properties are written into one reused table when it is published (see line_props).
local pend_body, pend_meta, pend_src, pend_cut, pend_end = {}, {}, {}, {}, {}
local n_lines, n_bytes, n_msgs, n_truncated, n_republished = 0, 0, 0, 0, 0
local on_confirm              -- function(stream_end) for the checkpoint, set in follow mode
local status = "running"

local function check_signal()
    local s = sys.signal()
    if s then signals[#signals + 1] = s end
    return #signals > 0
end

local function declare(c)
    local ok, err = broker.declare(c, "all", { quorum = opts.quorum })
    if ok then ok, err = c:confirm_select() end
    return ok, err
end

-- Publishes pend[seq] on the current connection (sequence numbers restart on a new one).
local publish_pending

-- (Re)connects forever, then publishes again everything not yet confirmed.
local function reconnect(err)
    log("broker connection lost (%s); reconnecting", err)
    status = "waiting for RabbitMQ"
    if conn then conn:close() end
    local back = util.backoff(0.2, 5)
    while true do
        conn, err = broker.connect(url, { forever = true, pending = signals, status = function(t)
            status = t
        end })
        if not conn then
            if #signals > 0 then
                util.die(NAME, "stopped while waiting for RabbitMQ; %d messages were not confirmed",
                    seq_next - 1 - confirmed)
            end
            if broker.is_fatal(err) then util.die(NAME, "%s", err) end
        else
            local ok
            ok, err = declare(conn)
            if ok then break end
            conn:close()
            conn = nil
        end
        util.sleep_unless_signal(back.next(), signals)
    end
    status = "running"
    log("reconnected; publishing %d unconfirmed messages again", seq_next - 1 - confirmed)
    -- Old sequence numbers mean nothing to the new channel: renumber from 1.
    local bodies, metas, srcs, cuts, ends = {}, {}, {}, {}, {}
    local k = 0
    for s = confirmed + 1, seq_next - 1 do
        k = k + 1
        bodies[k], metas[k], srcs[k], cuts[k], ends[k] =
            pend_body[s], pend_meta[s], pend_src[s], pend_cut[s], pend_end[s]
    end
    pend_body, pend_meta, pend_src, pend_cut, pend_end = bodies, metas, srcs, cuts, ends
    confirmed, seq_next = 0, k + 1
    return publish_pending(1, k)
end

-- The properties of a single line's message, in a table reused for every line: the
-- binding reads them during the publish call and keeps nothing.
local lineid, time = util.lineid, os.time
local line_headers = {}
local line_props = { content_type = "text/plain", persistent = true, headers = line_headers }

-- The properties of pending message s.
local function props_of(s)
    local meta = pend_meta[s]
    if type(meta) == "table" then return meta end
    local source, line = pend_src[s], pend_body[s]
    line_headers["x-source"], line_headers["x-offset"] = source, meta
    line_headers["x-truncated"] = pend_cut[s]
    line_props.message_id = lineid(source, meta, line)
    line_props.timestamp = time()
    return line_props
end

local take_confirms

-- Publishes pending message s on the current connection -> true, or false after a reconnect
-- (which published s again with the rest). While the broker blocks publishing (an alarm:
-- low on disk or memory), waits, reading its frames, and says so; a signal then stops the
-- producer, because nothing unconfirmed can be settled until the broker takes messages again.
local function send(s)
    local got, err = conn:publish(EXCHANGE, KEY, pend_body[s], props_of(s))
    if got == false then
        local c = conn
        log("%s; waiting", err)
        status = "waiting: " .. err
        while got == false do
            if check_signal() then
                util.die(NAME, "stopped while %s; %d messages were not confirmed", err,
                    seq_next - 1 - confirmed)
            end
            take_confirms(0.2)   -- reads what the broker sent, the end of the block included
            if conn ~= c then return false end
            got, err = conn:publish(EXCHANGE, KEY, pend_body[s], props_of(s))
            -- With nothing else in flight, take_confirms did not wait: do it here.
            if got == false and seq_next - 1 - confirmed <= 1 then util.sleep_unless_signal(0.2, signals) end
        end
        if got then
            log("the broker takes messages again")
            status = "running"
        end
    end
    if not got then
        reconnect(err)
        return false
    end
    return true
end

-- Publishes the pending messages first..last again (after a nack or a reconnect).
function publish_pending(first, last)
    for s = first, last do
        if not send(s) then return end
        n_republished = n_republished + 1
    end
end

-- Marks every message up to seq `upto` confirmed and moves the checkpoint.
local function advance(upto)
    if upto <= confirmed then return end
    local last_end
    for s = confirmed + 1, upto do
        last_end = pend_end[s] or last_end
        pend_body[s], pend_meta[s], pend_src[s], pend_cut[s], pend_end[s] = nil, nil, nil, nil, nil
    end
    confirmed = upto
    if on_confirm and last_end then on_confirm(last_end) end
end

-- Takes the confirms that have arrived, waiting up to `timeout` seconds for some.
function take_confirms(timeout)
    local upto, nacked = conn:confirms(timeout)
    if not upto then return reconnect(nacked) end
    if nacked then
        -- The broker refused some messages (rare: an internal error). Keep everything from the
        -- first refused one pending and publish it all again on a fresh connection; copies of
        -- lines that did arrive are harmless, the consumers' inserts are idempotent.
        table.sort(nacked)
        advance(nacked[1] - 1)
        return reconnect(string.format("the broker refused %d messages", #nacked))
    end
    advance(upto)
end

-- Publishes one message: body, meta and source as in pend_meta / pend_src, cut = truncated
-- line; stream_end = the stream offset after its last line.
local function publish(body, meta, source, cut, stream_end)
    local s = seq_next
    seq_next = s + 1
    pend_body[s], pend_meta[s], pend_src[s], pend_cut[s], pend_end[s] = body, meta, source, cut, stream_end
    if not send(s) then return end
    n_msgs = n_msgs + 1
    if s - confirmed >= WINDOW then
        repeat take_confirms(1) until seq_next - 1 - confirmed < WINDOW
    elseif n_msgs % 256 == 0 then
        take_confirms(0)
    end
end

-- Waits until every published message is confirmed.
local function drain()
    while confirmed < seq_next - 1 do take_confirms(1) end
end

---------------------------------------------------------------------------------------------
-- Lines to messages.

local batch_parts, batch_n, batch_first, batch_source = {}, 0, nil, nil

local function flush_batch()
    if batch_n == 0 then return end
    local body = table.concat(batch_parts, "", 1, batch_n * 4)
    publish(body, {
        message_id = lineid(batch_source, batch_first, body),
        content_type = broker.BATCH_TYPE,
        timestamp = time(),
        persistent = true,
        headers = { ["x-source"] = batch_source, ["x-offset"] = batch_first, ["x-lines"] = batch_n },
    }, nil, nil, batch_parts.stream_end)
    batch_n = 0
end

-- Sends one line: stream offset `off`, stream offset after its terminator `stream_end`.
local function send_line(source, line, off, truncated, stream_end)
    n_lines = n_lines + 1
    n_bytes = n_bytes + #line
    if truncated then
        n_truncated = n_truncated + 1
        -- A batch record cannot carry the flag: a cut line goes alone, as in single mode.
        flush_batch()
    elseif BATCH > 1 then
        -- Batch body: one record per line, "OFFSET SP LINE LF" (lines never contain LF).
        if batch_n > 0 and batch_source ~= source then flush_batch() end
        if batch_n == 0 then batch_first, batch_source = off, source end
        local k = batch_n * 4
        batch_parts[k + 1], batch_parts[k + 2], batch_parts[k + 3], batch_parts[k + 4] = off, " ", line, "\n"
        batch_n = batch_n + 1
        batch_parts.stream_end = stream_end
        if batch_n >= BATCH then flush_batch() end
        return
    end
    publish(line, off, source, truncated or nil, stream_end)
end

---------------------------------------------------------------------------------------------
-- Progress.

local t_start = sys.now()
local t_progress = t_start

local function progress(final)
    local now = sys.now()
    if not final and (PROGRESS <= 0 or now - t_progress < PROGRESS) then return end
    t_progress = now
    local dt = now - t_start
    if final then
        log("%d lines, %.1f MB, %.1f s, %s lines/s%s%s", n_lines, n_bytes / 1e6, dt,
            util.rate(n_lines, dt):gsub("/s$", ""),
            n_truncated > 0 and string.format(", %d lines cut to --max-line", n_truncated) or "",
            n_republished > 0 and string.format(", %d messages published again", n_republished) or "")
    else
        log("%d lines, %s, %d unconfirmed, %s", n_lines, util.rate(n_lines, dt),
            seq_next - 1 - confirmed, status)
    end
end

---------------------------------------------------------------------------------------------
-- Whole files.

local function run_files()
    for _, inp in ipairs(inputs) do
        local r, source = inp.reader, inp.source
        while true do
            local line, off, truncated = r:read(true)
            if line == nil then
                if off then util.die(NAME, "%s", off) end
                break
            end
            -- false: the reader is still dropping the rest of an over-long line
            if line then send_line(source, line, off, truncated, r:tell()) end
            if not line or n_lines % 1024 == 0 then
                progress(false)
                if check_signal() then
                    flush_batch()
                    drain()
                    log("stopped by signal after %d lines of %s (offset %d); everything sent is confirmed",
                        n_lines, inp.path, r:tell())
                    progress(true)
                    os.exit(1)
                end
            end
        end
        r:close()
    end
    flush_batch()
    drain()
end

---------------------------------------------------------------------------------------------
-- Follow mode: tail -F with a checkpoint that moves only after confirms.
--
-- Offsets in follow mode are stream offsets: the bytes read from this path since the
-- checkpoint was created, counted across rotations. So ids stay unique when a new file starts
-- again at byte 0. The checkpoint file holds: dev ino file_offset base, where base is the
-- stream offset of the file's first byte; everything before base+file_offset is confirmed.

-- r:read(true), through any false (the reader dropping the rest of an over-long line): for
-- the places that finish a file rather than wait on it.
local function read_through(r)
    local line, off, truncated
    repeat line, off, truncated = r:read(true) until line ~= false
    return line, off, truncated
end

local function follow()
    local inp = inputs[1]
    local path, source = inp.path, inp.source
    local state = opts.checkpoint
    if not state then
        os.execute("mkdir -p .lproc-state")
        state = ".lproc-state/" .. util.lineid(source, 0, ""):sub(1, 16) .. ".checkpoint"
    end
    local r = inp.reader
    local st = assert(r:stat())
    local cur = { dev = st.dev, ino = st.ino, base = 0 }
    local segments = { cur }        -- files still referenced by unconfirmed messages

    -- Resume from the checkpoint.
    local f = io.open(state, "rb")
    if f then
        local dev, ino, foff, base = f:read("a"):match("^(%d+) (%d+) (%d+) (%d+)")
        f:close()
        dev, ino, foff, base = tonumber(dev), tonumber(ino), tonumber(foff), tonumber(base)
        if dev and dev == cur.dev and ino == cur.ino then
            if st.size >= foff then
                r:seek(foff)
                cur.base = base
            else
                log("%s is shorter than the checkpoint (truncated while stopped); reading it from the start", path)
                cur.base = base + foff
            end
        elseif dev then
            -- Rotated while we were stopped: finish the old file if it is still next to it.
            local dir = path:match("^(.*)/[^/]*$") or "."
            local old
            for _, name in ipairs(sys.listdir(dir) or {}) do
                local s2 = sys.stat(dir .. "/" .. name)
                if s2 and s2.dev == dev and s2.ino == ino then old = dir .. "/" .. name break end
            end
            if old then
                log("resuming the rotated file %s at offset %d", old, foff)
                local ro = assert(reader.open(old, { max_line = MAX_LINE }))
                ro:seek(foff)
                local oseg = { dev = dev, ino = ino, base = base }
                segments = { oseg, cur }
                for line, off, truncated in function() return read_through(ro) end do
                    send_line(source, line, base + off, truncated, base + ro:tell())
                end
                cur.base = base + ro:tell()
                ro:close()
            else
                log("the file of the checkpoint is gone; reading %s from the start", path)
                cur.base = base + foff
            end
        end
    end

    local last_saved
    local function save(stream_end)
        -- Drop segments the confirmed position has left behind, then write the checkpoint.
        while #segments > 1 and segments[2].base <= stream_end do table.remove(segments, 1) end
        local seg = segments[1]
        local text = string.format("%d %d %d %d\n", seg.dev, seg.ino, stream_end - seg.base, seg.base)
        if text ~= last_saved then
            local ok, err = sys.write_atomic(state, text)
            if not ok then log("cannot write the checkpoint: %s", err) end
            last_saved = text
        end
    end
    local pending_save
    on_confirm = function(stream_end) pending_save = stream_end end
    local t_save = 0

    while true do
        local line, off, truncated = r:read()
        if line then
            send_line(source, line, cur.base + off, truncated, cur.base + r:tell())
        elseif line == false then
            -- the reader is still dropping the rest of an over-long line: read on
        elseif off then
            util.die(NAME, "%s", off)
        else
            -- Nothing more for now: send what is batched, take confirms, look for rotation.
            flush_batch()
            take_confirms(0)
            local s2 = sys.stat(path)
            if s2 and (s2.dev ~= cur.dev or s2.ino ~= cur.ino) then
                -- Renamed away: finish the old file, until it has been quiet for a second (the
                -- server may still write to it until it reopens its log), then switch.
                local quiet_since = sys.now()
                while sys.now() - quiet_since < 1 and #signals == 0 do
                    local l2, o2, t2 = r:read()
                    if l2 ~= nil then      -- a line, or false: more of an over-long one dropped
                        if l2 then send_line(source, l2, cur.base + o2, t2, cur.base + r:tell()) end
                        quiet_since = sys.now()
                    else
                        flush_batch()
                        take_confirms(0)
                        util.sleep_unless_signal(0.05, signals)
                    end
                end
                local l3, o3, t3 = read_through(r)  -- a last line without LF counts
                if l3 then send_line(source, l3, cur.base + o3, t3, cur.base + r:tell()) end
                flush_batch()
                local nr = reader.open(path, { max_line = MAX_LINE })
                if nr then
                    local base = cur.base + r:tell()
                    r:close()
                    r = nr
                    cur = { dev = s2.dev, ino = s2.ino, base = base }
                    segments[#segments + 1] = cur
                    log("%s was rotated; following the new file", path)
                end
            elseif s2 and s2.size < r:tell() then
                -- Copied and truncated in place: what was appended between our last read and
                -- the truncation went to the copy, as with any copytruncate reader.
                local base = cur.base + r:tell()
                r:seek(0)
                cur = { dev = cur.dev, ino = cur.ino, base = base }
                segments[#segments + 1] = cur
                log("%s was truncated; reading it from the start", path)
            else
                util.sleep_unless_signal(0.1, signals)
            end
        end
        local now = sys.now()
        if pending_save and now - t_save >= 0.5 then
            save(pending_save)
            pending_save, t_save = nil, now
        end
        progress(false)
        if check_signal() then
            flush_batch()
            drain()
            if pending_save then save(pending_save) end
            log("stopped by signal; checkpoint saved")
            progress(true)
            os.exit(0)
        end
    end
end

---------------------------------------------------------------------------------------------

local err
conn, err = broker.connect(url, { startup = opts.connect_timeout or 10, pending = signals })
if not conn and util.stopping(signals) then util.die(NAME, "stopped while waiting for RabbitMQ; nothing was sent") end
if not conn then util.die(NAME, "cannot connect to RabbitMQ: %s", err) end
local ok, derr = declare(conn)
if not ok then util.die(NAME, "%s", derr) end

if opts.follow then
    follow()
else
    run_files()
    progress(true)
    conn:close()
end
