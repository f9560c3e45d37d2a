-- lproc.broker: the pipeline's RabbitMQ topology and connection policy.
--
-- Topology: durable topic exchange "logs"; durable queues "queue-data-lake" and
-- "queue-data-clean", each bound with key "logs". Every script declares what it uses, so
-- start order does not matter and no line is lost when the producer starts first.
--
-- Connection policy: at start-up an unreachable broker is retried for a short bounded time,
-- then reported in one line (exit 1); refused credentials are reported at once. Later, a lost
-- connection is waited for with exponential backoff, for as long as it takes.
local amqp = require "lproc.amqp"
local config = require "lproc.config"
local sys = require "lproc.sys"
local util = require "lproc.util"

local M = {}

M.EXCHANGE = "logs"
M.ROUTING_KEY = "logs"
M.QUEUES = { lake = "queue-data-lake", clean = "queue-data-clean" }
M.BATCH_TYPE = "application/vnd.lproc.lines+v1"

-- Errors that a retry will not cure: wrong credentials, unknown vhost, bad URL.
function M.is_fatal(err)
    err = tostring(err)
    return err:find("ACCESS_REFUSED", 1, true) or err:find("login refused", 1, true)
        or err:find("not permitted", 1, true) or err:find("invalid URL", 1, true)
        or err:find("NOT_ALLOWED", 1, true)
end

-- M.connect(url, opts) -> conn | nil, err
-- opts.startup (seconds): bounded wait for a broker that is not up yet (fatal errors end it at
-- once); opts.forever: retry until it works or a signal arrives (opts.pending gets the signal);
-- opts.status(text): called with a progress text while waiting.
function M.connect(url, opts)
    opts = opts or {}
    local back = util.backoff(0.2, 5)
    local deadline = opts.forever and math.huge or sys.now() + (opts.startup or 10)
    local copts = { heartbeat = opts.heartbeat or 30, timeout = 5 }
    if url:find("^amqps:") then
        for k, v in pairs(config.amqp_tls()) do copts[k] = v end
    end
    while true do
        local conn, err = amqp.connect(url, copts)
        if conn then return conn end
        if M.is_fatal(err) then return nil, err end
        local d = back.next()
        if sys.now() + d > deadline then return nil, err end
        if opts.status then opts.status(string.format("waiting for RabbitMQ: %s; retry in %.1fs", err, d)) end
        if opts.pending and util.sleep_unless_signal(d, opts.pending) then return nil, "interrupted" end
        if not opts.pending then sys.sleep(d) end
    end
end

-- M.declare(conn, which, opts) -> true | nil, err
-- which: "all" (the producer) or "lake" / "clean" (a consumer: its queue only).
-- opts.quorum: declare the queues as quorum queues (x-queue-type=quorum).
function M.declare(conn, which, opts)
    local ok, err = conn:exchange_declare(M.EXCHANGE, "topic", { durable = true })
    if not ok then return nil, err end
    local args = opts and opts.quorum and { ["x-queue-type"] = "quorum" } or nil
    for role, q in pairs(M.QUEUES) do
        if which == "all" or which == role then
            ok, err = conn:queue_declare(q, { durable = true, arguments = args })
            if not ok then
                if tostring(err):find("PRECONDITION_FAILED", 1, true) then
                    err = err .. " (the queue exists with other settings: classic vs quorum?)"
                end
                return nil, err
            end
            ok, err = conn:queue_bind(q, M.EXCHANGE, M.ROUTING_KEY)
            if not ok then return nil, err end
        end
    end
    return true
end

return M
