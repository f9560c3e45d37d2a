-- The commands' answers to mistakes and outages at start-up: one clear line, a non-zero
-- status, no stack trace, no secret. And the configuration sources: environment, .env, the
-- original project's variable names.
local T = require "testing"
local P = require "pipeline"
local sys = require "lproc.sys"

local tmp = P.tmp
local LPROC = P.lproc
local ROOT = sys.realpath(".")
local AMQP = T.env("LPROC_TEST_AMQP_URL")
local MYSQL = T.env("LPROC_TEST_MYSQL_URL")
local CLOSED = 1   -- nothing listens on port 1 of loopback

-- Runs a shell command line in dir (default: a scratch dir), with env assignments prefixed
-- (test values only), without the real URLs. -> status, output
local function run(cmd, env, dir)
    local out = tmp .. "/cli.out"
    local full = string.format("cd %s && env -u LPROC_AMQP_URL -u LPROC_MYSQL_URL %s %s > %s 2>&1",
        dir or tmp, env or "", cmd, out)
    local _, _, code = os.execute(full)
    local f = io.open(out, "rb")
    local s = f and f:read("a") or ""
    if f then f:close() end
    return code, s
end

local function lines(s)
    local n = 0
    for _ in s:gmatch("[^\n]+") do n = n + 1 end
    return n
end

local LOG = tmp .. "/cli.log"
do
    local f = assert(io.open(LOG, "wb"))
    f:write('192.0.2.1 - - [01/Nov/2022:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "t"\n')
    f:close()
end
local producer = LPROC .. " " .. ROOT .. "/scripts/producer.lua --progress 0 "
local lake = LPROC .. " " .. ROOT .. "/scripts/lake.lua --progress 0 --idle-exit 1 "

T.test("the host: usage, version, script errors", function()
    local code, out = run(LPROC)
    T.eq(code, 2)
    T.ok(out:find("^usage: lproc SCRIPT"), out)
    code, out = run(LPROC .. " --version")
    T.eq(code, 0)
    for _, lib in ipairs({ "^lproc %d", "Lua 5%.4", "rabbitmq%-c", "MariaDB Connector/C", "PCRE2",
                           "OpenSSL", "libmaxminddb", "zlib" }) do
        T.ok(out:find(lib), lib .. " in " .. out)
    end
    code, out = run(LPROC .. " nosuch.lua")
    T.eq({ code, out }, { 1, "lproc: cannot open nosuch.lua: No such file or directory\n" })
    local f = assert(io.open(tmp .. "/boom.lua", "w"))
    f:write("local n = select('#', ...)\nif n == 2 then error('boom ' .. arg[1] .. arg[2] .. arg[0]:sub(-7)) end\n")
    f:close()
    code, out = run(LPROC .. " boom.lua a b")
    T.eq(code, 1)
    T.ok(out:find("^lproc: boom%.lua:2: boom aboom%.lua\nstack traceback:\n"), out)
    code, out = run(LPROC .. " --bogus")
    T.eq({ code, out }, { 2, "lproc: unknown option '--bogus' (try lproc --help)\n" })
end)

T.test("mistakes: a missing file, an unknown option, no configuration", function()
    local code, out = run(producer .. "/nonexistent.log", "LPROC_AMQP_URL=" .. AMQP)
    T.eq({ code, out }, { 1, "producer: cannot read /nonexistent.log: No such file or directory\n" })
    code, out = run(producer .. tmp, "LPROC_AMQP_URL=" .. AMQP)
    T.eq({ code, out }, { 1, "producer: cannot read " .. tmp .. ": Is a directory\n" })
    code, out = run(producer .. "--bogus " .. LOG)
    T.eq({ code, out }, { 2, "producer: unknown option --bogus (try --help)\n" })
    for _, c in ipairs({
        { producer .. "--batch 0 " .. LOG, "producer: option --batch needs a whole number >= 1, got '0' (try --help)\n" },
        { producer .. "--window=1.5 " .. LOG, "producer: option --window needs a whole number >= 1, got '1.5' (try --help)\n" },
        { producer .. "--max-line x " .. LOG, "producer: option --max-line needs a whole number >= 1, got 'x' (try --help)\n" },
        { lake .. "--prefetch 0", "lake: option --prefetch needs a whole number >= 1, got '0' (try --help)\n" },
        { lake .. "--batch-rows -5", "lake: option --batch-rows needs a whole number >= 1, got '-5' (try --help)\n" },
        { lake .. "--batch-ms -1", "lake: option --batch-ms needs a non-negative number, got '-1' (try --help)\n" },
    }) do
        code, out = run(c[1], "LPROC_AMQP_URL=" .. AMQP)
        T.eq({ code, out }, { 2, c[2] })
    end
    code, out = run(lake .. "--prefetch 70000", "LPROC_AMQP_URL=" .. AMQP .. " LPROC_MYSQL_URL=" .. MYSQL)
    T.eq({ code, out }, { 1, "lake: --prefetch is at most 65535, got 70000\n" })
    code, out = run(producer .. LOG)
    T.eq(code, 1)
    T.eq(out, "producer: no broker configured: set LPROC_AMQP_URL (or RABBIT_USER and RABBIT_PASSWORD) in the environment or .env\n")
    code, out = run(lake, "LPROC_AMQP_URL=" .. AMQP)
    T.eq(code, 1)
    T.ok(out:find("^lake: no database configured"), out)
end)

T.test("an unreachable server at start-up: a bounded wait, then one line", function()
    local t0 = sys.now()
    local code, out = run(producer .. "--connect-timeout 2 " .. LOG,
        "LPROC_AMQP_URL=amqp://u:SeCrEt-1@127.0.0.1:" .. CLOSED .. "/v")
    T.eq(code, 1)
    T.eq(out, "producer: cannot connect to RabbitMQ: amqp.connect: 127.0.0.1:" .. CLOSED .. ": connection refused\n")
    T.ok(sys.now() - t0 < 10, "bounded wait")
    code, out = run(lake .. "--connect-timeout 2",
        "LPROC_AMQP_URL=" .. AMQP .. " LPROC_MYSQL_URL=mysql://u:SeCrEt-2@127.0.0.1:" .. CLOSED .. "/db")
    T.eq(code, 1)
    T.eq(lines(out), 1, out)
    T.ok(out:find("^lake: cannot connect to MySQL: mysql.connect: 127.0.0.1:" .. CLOSED .. ": "), out)
    T.eq(out:find("SeCrEt", 1, true), nil, "no password")
end)

T.test("SIGTERM while waiting for a server at start-up: one line at once", function()
    local function stopped(script, amqp_url, mysql_url, want, hup)
        local p = P.spawn(ROOT .. "/scripts/" .. script .. " --progress 0 --connect-timeout 60 "
            .. (script == "producer.lua" and LOG or ""), "waiting",
            "-u LPROC_AMQP_URL -u LPROC_MYSQL_URL LPROC_AMQP_URL=" .. amqp_url .. " LPROC_MYSQL_URL=" .. mysql_url)
        sys.sleep(1)
        if hup then
            P.kill(p, "HUP")   -- a reload request is no reason to stop waiting
            T.eq(P.wait(p, 1), nil, "still waiting after SIGHUP: " .. P.output(p))
        end
        local t0 = sys.now()
        P.kill(p, "TERM")
        T.eq(P.wait(p, 10), 1, want .. ": " .. P.output(p))
        T.ok(sys.now() - t0 < 2, "at once")
        T.eq(P.output(p), want .. "\n")
    end
    local no_amqp = "amqp://u:p@127.0.0.1:" .. CLOSED .. "/v"
    local no_mysql = "mysql://u:p@127.0.0.1:" .. CLOSED .. "/db"
    stopped("producer.lua", no_amqp, MYSQL, "producer: stopped while waiting for RabbitMQ; nothing was sent")
    stopped("lake.lua", AMQP, no_mysql, "lake: stopped while waiting for MySQL")
    stopped("lake.lua", no_amqp, MYSQL, "lake: stopped while waiting for RabbitMQ")
    stopped("clean.lua", AMQP, no_mysql, "clean: stopped while waiting for MySQL", true)
    stopped("clean.lua", no_amqp, MYSQL, "clean: stopped while waiting for RabbitMQ", true)
end)

T.test("wrong credentials: one line at once, no password", function()
    local bad_amqp = AMQP:gsub("^(amqp://[^:]+:)[^@]+@", "%1Wr0ng-SeCrEt@")
    local t0 = sys.now()
    local code, out = run(producer .. LOG, "LPROC_AMQP_URL=" .. bad_amqp)
    T.eq(code, 1)
    T.eq(lines(out), 1, out)
    T.ok(out:find("^producer: cannot connect to RabbitMQ: .*ACCESS_REFUSED"), out)
    T.eq(out:find("Wr0ng", 1, true), nil, "no password")
    T.ok(sys.now() - t0 < 5, "no retry on refused credentials")
    local bad_mysql = MYSQL:gsub("^(mysql://[^:]+:)[^@]+@", "%1Wr0ng-SeCrEt@")
    code, out = run(lake, "LPROC_AMQP_URL=" .. AMQP .. " LPROC_MYSQL_URL=" .. bad_mysql)
    T.eq(code, 1)
    T.eq(lines(out), 1, out)
    T.ok(out:find("^lake: cannot connect to MySQL: .*Access denied.*%(1045%)"), out)
    T.eq(out:find("Wr0ng", 1, true), nil, "no password")
end)

-- Splits a URL into the original project's variable names.
local function original_names()
    local u, p, h, port, v = AMQP:match("^amqp://([^:]+):([^@]+)@([^:]+):(%d+)/(.*)$")
    local mu, mp, mh, mport, db = MYSQL:match("^mysql://([^:]+):([^@]+)@([^:]+):(%d+)/(.*)$")
    return string.format("RABBIT_USER=%s\nRABBIT_PASSWORD=%s\nRABBIT_HOST=%s\nRABBIT_PORT=%s\nRABBIT_VHOST=%s\n"
        .. "MYSQL_USER=%s\nMYSQL_PASSWORD='%s'\nMYSQL_DATABASE=%s\nHOST=%s\nPORT=%s\n",
        u, p, h, port, v, mu, mp, db, mh, mport)
end

T.test(".env with the original project's names; a world-readable .env draws a warning", function()
    P.reset()
    local dir = tmp .. "/envdir"
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/.env", "w"))
    f:write("# the original project's .env\n", original_names())
    f:close()
    os.execute("chmod 644 " .. dir .. "/.env")
    local code, out = run(producer .. LOG, nil, dir)
    T.eq(code, 0, out)
    T.ok(out:find("producer: warning: .env is readable by other users; run: chmod 600 .env\n", 1, true), out)
    os.execute("chmod 600 " .. dir .. "/.env")
    code, out = run(lake, nil, dir)
    T.eq(code, 0, out)
    T.eq(out:find("warning", 1, true), nil, "no warning at mode 600")
    T.eq(P.count("SELECT COUNT(*) FROM raw_log"), 1)
    -- A real environment variable wins over .env.
    code, out = run(producer .. "--connect-timeout 1 " .. LOG,
        "LPROC_AMQP_URL=amqp://u:p@127.0.0.1:" .. CLOSED .. "/v", dir)
    T.eq(code, 1, out)
end)

T.test("amqps:// and MySQL TLS through the pipeline, certificates checked", function()
    P.reset()
    local ca = T.env("LPROC_TEST_TLS_CA")
    local env = string.format("LPROC_AMQP_URL=%s LPROC_AMQP_CACERT=%s LPROC_MYSQL_URL='%s?ssl-mode=VERIFY_IDENTITY&ssl-ca=%s'",
        T.env("LPROC_TEST_AMQPS_URL"), ca, MYSQL, ca)
    local code, out = run(producer .. LOG, env)
    T.eq(code, 0, out)
    code, out = run(lake, env)
    T.eq(code, 0, out)
    T.eq(P.count("SELECT COUNT(*) FROM raw_log"), 1)
    -- Without the private CA, the broker's certificate is refused.
    code, out = run(producer .. "--connect-timeout 1 " .. LOG,
        "LPROC_AMQP_URL=" .. T.env("LPROC_TEST_AMQPS_URL"))
    T.eq(code, 1, out)
    T.eq(lines(out), 1, out)
end)

T.test("SIGTERM while a line never ends (/dev/zero): the producer stops at once", function()
    P.reset()
    local p = P.spawn("scripts/producer.lua --progress 0 --max-line 1000 /dev/zero", "zero")
    sys.sleep(1.5)
    P.kill(p, "TERM")
    local rc = P.wait(p, 10)
    if rc == nil then P.kill(p, "KILL") end
    T.eq(rc, 1, "status after SIGTERM: " .. P.output(p))
    T.ok(P.output(p):find("stopped by signal after 1 lines of /dev/zero", 1, true), P.output(p))
    P.reset()
end)

T.done()
