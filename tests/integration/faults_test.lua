-- Randomised fault runs: while the pipeline runs, kill -9 one component at a random moment
-- (the producer, a consumer, RabbitMQ or MariaDB), restart it, and check that every line
-- ends up exactly once in raw_log and exactly once in clean_log or clean_log_reject.
--
-- LPROC_FAULT_TRIALS (default 1) trials per component; LPROC_FAULT_SEED replays a run (the
-- seed is printed). `make faults` runs 20 trials per component.
local T = require "testing"
local P = require "pipeline"
local sys = require "lproc.sys"

local TRIALS = tonumber(os.getenv("LPROC_FAULT_TRIALS") or "1")
local SEED = tonumber(os.getenv("LPROC_FAULT_SEED") or "") or (os.time() % 100000)
io.stdout:write(string.format("  fault seed %d (replay: LPROC_FAULT_SEED=%d)\n", SEED, SEED))
math.randomseed(SEED)

local LINES = 6000
local LOG = P.tmp .. "/faults.log"
P.genlog(LOG, LINES, SEED)
local SRC = sys.realpath(LOG)

local PRODUCER = "scripts/producer.lua --progress 0 --window 512 " .. LOG
local LAKE = "scripts/lake.lua --progress 0 --batch-rows 300 --idle-exit "
local CLEAN = "scripts/clean.lua --progress 0 --batch-rows 300 --idle-exit "
-- A consumer exits once its queue has been idle that long. After a broker restart the
-- producer may reconnect up to one backoff step (at most about 6 s) after the consumers, and
-- only then publish the rest of the file: the consumers must wait longer than that.
local function idle_exit(component) return component == "rabbitmq" and "10" or "4" end

local function trial(component, k)
    P.reset()
    local procs = {
        lake = P.spawn(LAKE .. idle_exit(component), "lake"),
        clean = P.spawn(CLEAN .. idle_exit(component), "clean"),
        producer = P.spawn(PRODUCER, "producer"),
    }
    -- Strike once the pipeline runs (a server that is down at start-up is a different case:
    -- a bounded wait, then an error, tested in cli_test).
    T.ok(P.wait_until(function()
        local ok, n = pcall(P.count, "SELECT COUNT(*) FROM raw_log")
        return ok and n > 0
    end, 120), component .. " trial " .. k .. ": the pipeline started")
    local delay = math.random() * 2
    local down = 0.2 + math.random() * 1.5
    sys.sleep(delay)
    local what = string.format("%s trial %d: kill -9 after %.2f s, down %.2f s", component, k, delay, down)
    if component == "rabbitmq" or component == "mariadb" then
        P.servers("kill", component)
        sys.sleep(down)
        P.servers("resume", component)
    else
        P.kill(procs[component], "KILL")
        P.wait(procs[component], 10)
        sys.sleep(down)
        local cmd = component == "producer" and PRODUCER
            or (component == "lake" and LAKE or CLEAN) .. idle_exit(component)
        procs[component] = P.spawn(cmd, component)
    end
    for _, name in ipairs({ "producer", "lake", "clean" }) do
        local p = procs[name]
        local rc = P.wait(p, 240)
        if rc ~= 0 then
            for _, q in pairs(procs) do P.kill(q, "KILL") end
            error(string.format("%s: %s exited with %s:\n%s", what, name, tostring(rc), P.output(p)))
        end
    end
    local bad = P.check_exact({ { path = LOG, source = SRC } })
    T.eq(bad, nil, what)
end

for _, component in ipairs({ "producer", "lake", "clean", "rabbitmq", "mariadb" }) do
    for k = 1, TRIALS do
        T.test(string.format("kill -9 %s (trial %d of %d)", component, k, TRIALS), function()
            trial(component, k)
        end)
    end
end

T.done()
