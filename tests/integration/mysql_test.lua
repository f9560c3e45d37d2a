-- mysql_test.lua: lproc.mysql against the private MariaDB server of tests/run.sh.
local T = require "testing"
local mysql = require "lproc.mysql"

local URL = T.env("LPROC_TEST_MYSQL_URL")
local ROOT_CNF = T.env("LPROC_MYSQL_ROOT_CNF")
local PASSWORD = "lproc-test-secret"   -- tests/servers.sh's default, checked below
local u = mysql.parse_url(URL)
local PORT = u.port
local TARGET = "127.0.0.1:" .. PORT
local CLOSED_PORT = tonumber(T.env("LPROC_PORT_BASE")) + 9   -- no server of ours listens there

local function connect(opts)
    local c, err, code = mysql.connect(URL, opts)
    T.ok(c, "connect: " .. tostring(err) .. " " .. tostring(code))
    return c
end

local conn = connect()

-- Runs SQL as root through the mariadb client (for server-wide settings).
local function root_sql(sql)
    local cmd = string.format("mariadb --defaults-file='%s' -uroot -e \"%s\"", ROOT_CNF, sql)
    T.ok(os.execute(cmd), "root: " .. sql)
end

local function ok(...)
    local v, err, code = ...
    if v == nil then error(tostring(err) .. " (code " .. tostring(code) .. ")", 2) end
    return ...
end

-- The message of the error fn raises, without the "file:line: " luaL_error puts first.
local function raised(fn)
    local success, e = pcall(fn)
    if success then return "(no error)" end
    return (tostring(e):gsub("^[^:\n]+:%d+: ", "", 1))
end

local function com_insert(c)
    return tonumber(ok(c:query_one("SHOW SESSION STATUS LIKE 'Com_insert'")).Value)
end

-- Every byte value, in order.
local ALL_BYTES = {}
for i = 0, 255 do ALL_BYTES[#ALL_BYTES + 1] = string.char(i) end
ALL_BYTES = table.concat(ALL_BYTES)

-- A deterministic pseudo-random string of n bytes.
local function noise(n, seed)
    local x, parts = seed, {}
    for i = 1, n do
        x = (x * 1103515245 + 12345) % 2147483648
        parts[i] = string.char(x >> 16 & 255)
    end
    return table.concat(parts)
end

local TRICKY = {
    "",
    "plain",
    "a\0b\0",
    "\255\254\128\192\193 invalid UTF-8",
    ALL_BYTES,
    "'", "''", "\"", "\\", "\\'", "'\\", "\\\\'", "\\0", "\\n",
    "'; DROP TABLE x; --",
    "\26\r\n\t",
    "? ?? '?'",
    "h\195\169llo \240\159\152\128",
}

------------------------------------------------------------------------------------------------
T.test("parse_url: every part, percent-decoding, no password", function()
    T.eq(mysql.parse_url("mysql://us%40er:p%3Ass@db.example:3307/my%2Fdb?ssl-mode=REQUIRED&ssl-ca=/a%20b.pem&flag"),
         { user = "us@er", host = "db.example", port = 3307, database = "my/db",
           params = { ["ssl-mode"] = "REQUIRED", ["ssl-ca"] = "/a b.pem", flag = "" } })
    T.eq(mysql.parse_url("mysql://h"), { host = "h", port = 3306, params = {} })
    T.eq(mysql.parse_url("mariadb://u@[::1]:3310/"), { user = "u", host = "::1", port = 3310, params = {} })
    T.eq(mysql.parse_url("mysql://u:secret@localhost/db?socket=/run/x.sock"),
         { user = "u", host = "localhost", port = 3306, database = "db", params = { socket = "/run/x.sock" } })
    T.eq(u.user, "lproc")
    T.eq(u.database, "lproc")
    T.eq(u.password, nil)
end)

T.test("parse_url and connect: bad URLs and options raise, never quoting the URL", function()
    local BAD_URLS = {
        { "http://x", "it must start with mysql://" },
        { "mysql://u:p@h:99999/d", "bad port" },
        { "mysql://u:p@h:12a/d", "bad port" },
        { "mysql://u:p@h:/d", "empty port" },
        { "mysql://u:p@:1/d", "missing host" },
        { "mysql://u:p@[::1/d", "unterminated [ in the host" },
        { "mysql://u:se%zzcret@h/d", "bad percent-encoding in the password" },
        { "mysql://u%2@h/d", "bad percent-encoding in the user" },
        { "mysql://u@h/d%g0", "bad percent-encoding in the database" },
    }
    for _, case in ipairs(BAD_URLS) do
        T.eq(raised(function() mysql.parse_url(case[1]) end), "mysql.parse_url: invalid URL: " .. case[2])
        T.eq(raised(function() mysql.connect(case[1]) end), "mysql.connect: invalid URL: " .. case[2])
    end
    local BAD_OPTIONS = {
        { "mysql://u:secret@h/d?sslmode=x", nil, "unknown URL parameter 'sslmode'" },
        { "mysql://u:secret@h/d?password=x", nil, "unknown URL parameter 'password'" },
        { URL, { timeout = 3 }, "unknown option 'timeout'" },
        { URL, { ssl_mode = "sometimes" },
          "option 'ssl_mode' must be disabled, preferred, required, verify_ca or verify_identity" },
        { URL, { ssl_mode = "verify_ca" }, "ssl_mode verify_ca needs ssl_ca or ssl_capath" },
        { URL .. "?ssl-mode=VERIFY-IDENTITY", nil, "ssl_mode verify_identity needs ssl_ca or ssl_capath" },
        { URL, { ssl_ca = 5 }, "option 'ssl_ca' must be a string" },
        { URL, { socket = "a\0b" }, "option 'socket' contains a NUL byte" },
        { URL, { read_timeout = 0 }, "option 'read_timeout' must be a number of seconds > 0" },
        { URL .. "?connect-timeout=soon", nil, "option 'connect_timeout' must be a number of seconds > 0" },
        { URL, { local_infile = "maybe" }, "option 'local_infile' must be a boolean" },
    }
    for _, case in ipairs(BAD_OPTIONS) do
        T.eq(raised(function() mysql.connect(case[1], case[2]) end), "mysql.connect: " .. case[3])
    end
    T.eq(raised(function() mysql.connect(URL, 5) end), "bad argument #2 to 'connect' (table expected, got number)")
end)

T.test("connect, tostring, server_version, close twice", function()
    T.eq(URL, "mysql://lproc:" .. PASSWORD .. "@" .. TARGET .. "/lproc")
    local c = connect({ connect_timeout = 5, read_timeout = 30, write_timeout = 30 })
    T.eq(tostring(c), "mysql.connection (mysql://lproc@" .. TARGET .. "/lproc)")
    T.ok(c:server_version():find("MariaDB", 1, true), c:server_version())
    T.eq(c:ping(), true)
    c:close()
    c:close()
    T.eq(tostring(c), "mysql.connection (closed)")
    do
        local c2 <close> = connect()
        T.eq(c2:ping(), true)
    end
end)

T.test("the session: utf8mb4, autocommit, backslash escapes", function()
    local r = ok(conn:query_one([[SELECT @@character_set_client AS cs, @@character_set_results AS rs,
        @@autocommit AS ac, @@sql_mode AS m, CONNECTION_ID() > 0 AS id]]))
    T.eq(r.cs, "utf8mb4")
    T.eq(r.rs, "utf8mb4")
    T.eq(r.ac, 1)
    T.eq(r.m:find("NO_BACKSLASH_ESCAPES", 1, true), nil)
    T.eq(r.id, 1)
end)

T.test("multi-statements are refused by the server", function()
    local n, err, code = conn:execute("SELECT 1; SELECT 2")
    T.eq(n, nil)
    T.eq(code, 1064)
    T.ok(err:find("^mysql.execute: You have an error in your SQL syntax.*near 'SELECT 2' at line 1 %(1064%)$"), err)
    -- an injection attempt through a value stays a value
    local r = ok(conn:query_one("SELECT ? AS v", "1'; SELECT 2; --"))
    T.eq(r, { v = "1'; SELECT 2; --" })
end)

T.test("execute/query round trip with every type", function()
    ok(conn:execute("DROP TABLE IF EXISTS types_t"))
    ok(conn:execute([[CREATE TABLE types_t (
        id INT AUTO_INCREMENT PRIMARY KEY, ti TINYINT, si SMALLINT UNSIGNED, mi MEDIUMINT, i INT,
        bi BIGINT, bu BIGINT UNSIGNED, f FLOAT, d DOUBLE, dec1 DECIMAL(10,2), dec0 DECIMAL(20,0),
        yr YEAR, dt DATE, dtt DATETIME(3), ts TIMESTAMP NULL, tm TIME, vc VARCHAR(50),
        tx TEXT, bl BLOB, bt BIT(12), en ENUM('a','b'), js JSON, nul INT)]]))
    local n, id = ok(conn:execute([[INSERT INTO types_t (ti, si, mi, i, bi, bu, f, d, dec1, dec0, yr,
        dt, dtt, ts, tm, vc, tx, bl, bt, en, js, nul) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
        ?, ?, ?, ?, ?, b'101010101010', ?, ?, ?)]],
        -128, 65535, -8388608, 2147483647, math.mininteger, "18446744073709551615", 1.5, 0.1,
        "12345678.91", "-99999999999999999999", 2024, "2024-02-29", "2024-02-29 23:59:58.125",
        "2038-01-19 03:14:07", "-838:59:59", "h\195\169llo", "text\0with nul", "\0\1\2\255",
        "b", '{"k": [1, 2]}', nil))
    T.eq(n, 1)
    T.eq(id, 1)
    local rows, cols = ok(conn:query("SELECT * FROM types_t"))
    T.eq(cols, { "id", "ti", "si", "mi", "i", "bi", "bu", "f", "d", "dec1", "dec0", "yr", "dt", "dtt",
                 "ts", "tm", "vc", "tx", "bl", "bt", "en", "js", "nul" })
    T.eq(#rows, 1)
    local r = rows[1]
    T.eq(r, { id = 1, ti = -128, si = 65535, mi = -8388608, i = 2147483647, bi = math.mininteger,
              bu = "18446744073709551615", f = 1.5, d = 0.1, dec1 = 12345678.91,
              dec0 = -1e20, yr = 2024, dt = "2024-02-29", dtt = "2024-02-29 23:59:58.125",
              ts = "2038-01-19 03:14:07", tm = "-838:59:59", vc = "h\195\169llo",
              tx = "text\0with nul", bl = "\0\1\2\255", bt = "\10\170", en = "b",
              js = '{"k": [1, 2]}' })
    T.eq(math.type(r.bi), "integer")
    T.eq(math.type(r.d), "float")
    T.eq(math.type(r.f), "float")
    T.eq(math.type(r.yr), "integer")
    T.eq(r.nul, nil)
    -- BIGINT UNSIGNED up to 2^63-1 is an integer, above it the exact decimal string
    r = ok(conn:query_one("SELECT CAST(9223372036854775807 AS UNSIGNED) AS a, CAST(9223372036854775808 AS UNSIGNED) AS b"))
    T.eq(r, { a = math.maxinteger, b = "9223372036854775808" })
    -- DECIMAL: an integer when it has no fraction, else a float; DOUBLE is always a float
    r = ok(conn:query_one("SELECT SUM(3) AS s, 2.50 AS d, CAST(3 AS DOUBLE) AS f, COUNT(*) AS n FROM types_t"))
    T.eq(r, { s = 3, d = 2.5, f = 3.0, n = 1 })
    T.eq(math.type(r.s), "integer")
    T.eq(math.type(r.f), "float")
    T.eq(math.type(r.n), "integer")
end)

T.test("placeholders: every value type, exact SQL semantics", function()
    local r = ok(conn:query_one("SELECT ? AS s, ? AS i, ? AS neg, ? AS f, ? AS t, ? AS fa, ? AS n, ? AS big, ? AS small",
        "it's", 42, -7, 0.1, true, false, nil, math.maxinteger, math.mininteger))
    T.eq(r, { s = "it's", i = 42, neg = -7, f = 0.1, t = 1, fa = 0, big = math.maxinteger, small = math.mininteger })
    -- a float is sent with 17 significant digits: it survives exactly
    r = ok(conn:query_one("SELECT ? = 0.1 AS dec_eq, CAST(? AS DOUBLE) AS x, ? AS e", 0.1, 1 / 3, 1e300))
    T.eq(r, { dec_eq = 0, x = 1 / 3, e = 1e300 })
    -- arithmetic with negative values next to a minus sign is not a comment
    r = ok(conn:query_one("SELECT 1-? AS a, ?-? AS b", -5, -1, -1))
    T.eq(r, { a = 6, b = 0 })
    -- `?` inside literals, quoted identifiers and comments is not a placeholder
    r = ok(conn:query_one("SELECT '?' AS `q?`, \"?\" AS q2, 'it''s ?' AS q3, 'a\\'?' AS q4, ? AS v /* ? */ -- ?\n", "x"))
    T.eq(r, { ["q?"] = "?", q2 = "?", q3 = "it's ?", q4 = "a'?", v = "x" })
    r = ok(conn:query_one("SELECT ? AS v # ?", 3))
    T.eq(r, { v = 3 })
    -- no values: the SQL goes as is
    T.eq(ok(conn:query_one("SELECT '?' AS q")), { q = "?" })
end)

T.test("placeholders: wrong count and bad values raise", function()
    local CASES = {
        { "execute", { "SELECT ?, ?", 1 }, "mysql.execute: 2 placeholders but 1 values" },
        { "execute", { "SELECT '?'", 1 }, "mysql.execute: 0 placeholders but 1 values" },
        { "query", { "SELECT ?" }, "mysql.query: 1 placeholders but 0 values" },
        { "query_one", { "SELECT ?", 1, nil, n = 3 }, "mysql.query_one: 1 placeholders but 2 values" },
        { "execute", { "SELECT ?", 1 / 0 }, "mysql.execute: bad value #1 (inf and nan have no SQL literal)" },
        { "query", { "SELECT ?, ?", 1, 0 / 0 }, "mysql.query: bad value #2 (inf and nan have no SQL literal)" },
        { "execute", { "SELECT ?", {} },
          "mysql.execute: bad value #1 (string, number, boolean or nil expected, got table)" },
        { "query", { "SELECT ?", print },
          "mysql.query: bad value #1 (string, number, boolean or nil expected, got function)" },
    }
    for _, case in ipairs(CASES) do
        local args = case[2]
        T.eq(raised(function() conn[case[1]](conn, table.unpack(args, 1, args.n or #args)) end), case[3])
    end
    T.eq(raised(function() conn:execute({}) end), "bad argument #1 to 'execute' (string expected, got table)")
end)

T.test("conn:escape", function()
    T.eq(conn:escape("a'b\\c\0d\ne\rf\26g\"h"), "a\\'b\\\\c\\0d\\ne\\rf\\Zg\\\"h")
    T.eq(conn:escape(""), "")
    local s = ok(conn:query_one("SELECT '" .. conn:escape(ALL_BYTES) .. "' AS s")).s
    T.eq(s, ALL_BYTES)
end)

T.test("query: statements without rows, empty results, NULLs absent", function()
    ok(conn:execute("DROP TABLE IF EXISTS q_t"))
    local rows, cols = ok(conn:query("CREATE TABLE q_t (id INT PRIMARY KEY, v VARCHAR(10))"))
    T.eq(rows, {})
    T.eq(cols, {})
    rows, cols = ok(conn:query("SELECT id, v FROM q_t"))
    T.eq(rows, {})
    T.eq(cols, { "id", "v" })
    T.eq(conn:query_one("SELECT id FROM q_t"), nil)
    ok(conn:execute("INSERT INTO q_t VALUES (1, NULL), (2, 'b')"))
    T.eq(ok(conn:query("SELECT * FROM q_t ORDER BY id")), { { id = 1 }, { id = 2, v = "b" } })
    -- execute on a statement that returns rows gives their number
    T.eq({ ok(conn:execute("SELECT * FROM q_t")) }, { 2, 0 })
    local n, err, code = conn:query("SELECT nope FROM q_t")
    T.eq({ n, err, code }, { nil, "mysql.query: Unknown column 'nope' in 'SELECT' (1054)", 1054 })
    n, err, code = conn:execute("INSERT INTO q_t VALUES (1, 'dup')")
    T.eq({ n, err, code }, { nil, "mysql.execute: Duplicate entry '1' for key 'PRIMARY' (1062)", 1062 })
    T.eq(mysql.is_connection_error(code), false)
    T.eq(conn:ping(), true)   -- still usable after errors
end)

local function bytes_table(c, name)
    ok(c:execute("DROP TABLE IF EXISTS " .. name))
    ok(c:execute("CREATE TABLE " .. name .. " (id INT PRIMARY KEY, b LONGBLOB, v VARBINARY(1024))"))
end

local BIG = noise(1024 * 1024, 7)

local function check_bytes(name)
    local rows = ok(conn:query("SELECT id, b, v FROM " .. name .. " ORDER BY id"))
    T.eq(#rows, #TRICKY + 1)
    for i, s in ipairs(TRICKY) do
        T.eq(rows[i].b, s, name .. " blob #" .. i)
        T.eq(rows[i].v, s, name .. " varbinary #" .. i)
    end
    T.eq(#rows[#TRICKY + 1].b, #BIG)
    T.ok(rows[#TRICKY + 1].b == BIG, "1 MB value intact")
    T.eq(rows[#TRICKY + 1].v, BIG:sub(1, 1024))
end

T.test("bytes survive exactly through execute (LONGBLOB, VARBINARY)", function()
    bytes_table(conn, "bytes_x")
    for i, s in ipairs(TRICKY) do
        T.eq({ ok(conn:execute("INSERT INTO bytes_x (id, b, v) VALUES (?, ?, ?)", i, s, s)) }, { 1, 0 })
    end
    ok(conn:execute("INSERT INTO bytes_x (id, b, v) VALUES (?, ?, ?)", #TRICKY + 1, BIG, BIG:sub(1, 1024)))
    check_bytes("bytes_x")
    -- and as query parameters: exact comparison on the server
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n FROM bytes_x WHERE b = ?", ALL_BYTES)), { n = 1 })
    T.eq(ok(conn:query_one("SELECT id FROM bytes_x WHERE b = ?", "'; DROP TABLE x; --")), { id = 15 })
end)

T.test("bytes survive exactly through a batch insert", function()
    bytes_table(conn, "bytes_b")
    local b = mysql.batch("bytes_b", { "id", "b", "v" })
    for i, s in ipairs(TRICKY) do b:add(i, s, s) end
    b:add(#TRICKY + 1, BIG, BIG:sub(1, 1024))
    T.eq(b:count(), #TRICKY + 1)
    T.eq(ok(conn:insert(b)), #TRICKY + 1)
    T.eq(b:count(), #TRICKY + 1)   -- insert does not clear
    check_bytes("bytes_b")
end)

local function com_load(c)
    return tonumber(ok(c:query_one("SHOW SESSION STATUS LIKE 'Com_load'")).Value)
end

T.test("load batches: LOAD DATA LOCAL from memory, the same bytes and rows as INSERT", function()
    local lc = connect({ local_infile = true })
    bytes_table(lc, "bytes_l")
    local b = mysql.batch("bytes_l", { "id", "b", "v" }, { on_duplicate = "ignore", load = true })
    for i, s in ipairs(TRICKY) do b:add(i, s, s) end
    b:add(#TRICKY + 1, BIG, BIG:sub(1, 1024))
    local loads, inserts = com_load(lc), com_insert(lc)
    T.eq(ok(lc:insert(b)), #TRICKY + 1)
    T.eq(ok(lc:insert(b)), 0)                      -- every id is there: skipped, no error
    T.eq({ com_load(lc) - loads, com_insert(lc) - inserts }, { 2, 0 })
    check_bytes("bytes_l")

    -- NULL, the text "\N" and the empty string stay three different values; numbers and
    -- booleans arrive as INSERT sends them
    ok(lc:execute("DROP TABLE IF EXISTS load_t"))
    ok(lc:execute("CREATE TABLE load_t (id INT PRIMARY KEY, s VARCHAR(8), n BIGINT, x DOUBLE, f BOOL, "
        .. "d DECIMAL(12,3), t DATETIME) DEFAULT CHARSET=utf8mb4"))
    local lb = mysql.batch("load_t", { "id", "s", "n", "x", "f", "d", "t" }, { on_duplicate = "ignore", load = true })
    lb:add(1, nil, math.mininteger, -0.125, true, "123456789.125", "2022-11-01 05:00:00")
    lb:add(2, "\\N", math.maxinteger, 1e300, false, nil, nil)
    lb:add(3, "", 0, 2.5, nil, "-0.001", "2024-02-29 23:59:59")
    T.eq(ok(lc:insert(lb)), 3)
    T.eq(ok(lc:query("SELECT * FROM load_t ORDER BY id")), {
        { id = 1, n = math.mininteger, x = -0.125, f = 1, d = 123456789.125, t = "2022-11-01 05:00:00" },
        { id = 2, s = "\\N", n = math.maxinteger, x = 1e300, f = 0 },
        { id = 3, s = "", n = 0, x = 2.5, d = -0.001, t = "2024-02-29 23:59:59" },
    })

    -- a value a strict INSERT would refuse is an error here too, and none of the batch's rows
    -- stay, in a transaction of the caller's or without one
    local bad = mysql.batch("load_t", { "id", "s" }, { on_duplicate = "ignore", load = true })
    bad:add(10, "fits")
    bad:add(11, "far too long for eight")
    T.eq({ lc:insert(bad) }, { nil, "mysql.insert: Data truncated for column 's' at row 2 (1265)", 1265 })
    T.eq(lc:begin(), true)
    ok(lc:execute("INSERT INTO load_t (id) VALUES (20)"))
    T.eq({ lc:insert(bad) }, { nil, "mysql.insert: Data truncated for column 's' at row 2 (1265)", 1265 })
    T.eq(lc:commit(), true)
    T.eq(ok(lc:query("SELECT id FROM load_t WHERE id >= 10 ORDER BY id")), { { id = 20 } })

    -- without local_infile on the connection, or with a server that refuses it, a load batch
    -- goes as INSERT
    inserts = com_insert(conn)
    T.eq(ok(conn:insert(b)), 0)
    T.eq(com_insert(conn) - inserts, 1)
    root_sql("SET GLOBAL local_infile = 0")
    local refused = connect({ local_infile = true })
    bytes_table(refused, "bytes_r")
    local rb = mysql.batch("bytes_r", { "id", "b", "v" }, { on_duplicate = "ignore", load = true })
    for i, s in ipairs(TRICKY) do rb:add(i, s, s) end
    rb:add(#TRICKY + 1, BIG, BIG:sub(1, 1024))
    T.eq(refused:begin(), true)
    T.eq(ok(refused:insert(rb)), #TRICKY + 1)
    T.eq(ok(refused:insert(rb)), 0)
    T.eq(refused:commit(), true)
    root_sql("SET GLOBAL local_infile = 1")
    check_bytes("bytes_r")
    refused:close()
    lc:close()

    T.eq(raised(function() mysql.batch("t", { "a" }, { load = true }) end),
         "mysql.batch: load needs on_duplicate = \"ignore\" (LOAD DATA LOCAL skips duplicates)")
    T.eq(raised(function() mysql.batch("t", { "a" }, { on_duplicate = "ignore", load = 1 }) end),
         "mysql.batch: load must be a boolean")
end)

T.test("batch: 10k rows in one transaction, one statement", function()
    ok(conn:execute("DROP TABLE IF EXISTS batch_t"))
    ok(conn:execute("CREATE TABLE batch_t (id BIGINT PRIMARY KEY, host VARCHAR(64), n INT, x DOUBLE, flag BOOL, note TEXT)"))
    local b = mysql.batch("batch_t", { "id", "host", "n", "x", "flag", "note" })
    for i = 1, 10000 do
        local note = nil
        if i % 10 ~= 0 then note = "n'" .. i end
        b:add(i, "host-" .. i % 7, i * 3, i / 4, i % 2 == 0, note)
    end
    T.eq(b:count(), 10000)
    T.eq(tostring(b), "mysql.batch (10000 rows)")
    local before = com_insert(conn)
    T.eq(conn:begin(), true)
    T.eq(ok(conn:insert(b)), 10000)
    T.eq(conn:commit(), true)
    T.eq(com_insert(conn) - before, 1)
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n, SUM(n) AS s, SUM(flag) AS f, COUNT(note) AS notes FROM batch_t")),
         { n = 10000, s = 3 * 10000 * 10001 // 2, f = 5000, notes = 9000 })
    T.eq(ok(conn:query_one("SELECT * FROM batch_t WHERE id = 9999")),
         { id = 9999, host = "host-3", n = 29997, x = 2499.75, flag = 0, note = "n'9999" })
    T.eq(ok(conn:query_one("SELECT * FROM batch_t WHERE id = 10000")),
         { id = 10000, host = "host-4", n = 30000, x = 2500.0, flag = 1 })
    b:clear()
    T.eq(b:count(), 0)
    T.eq(b:bytes(), 0)
    T.eq(ok(conn:insert(b)), 0)   -- an empty batch sends nothing
end)

T.test("batch: idempotent re-insert and update on the key", function()
    ok(conn:execute("DROP TABLE IF EXISTS idem_t"))
    ok(conn:execute("CREATE TABLE idem_t (id INT PRIMARY KEY, v VARCHAR(20), w INT)"))
    local b = mysql.batch("idem_t", { "id", "v", "w" }, { on_duplicate = "ignore" })
    for i = 1, 100 do b:add(i, "v" .. i, i) end
    T.eq(ok(conn:insert(b)), 100)
    T.eq(ok(conn:insert(b)), 0)        -- every row exists: nothing changes, 0 affected
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n FROM idem_t")), { n = 100 })
    -- half new rows: only they count
    local b2 = mysql.batch("idem_t", { "id", "v", "w" }, { on_duplicate = "ignore" })
    for i = 51, 150 do b2:add(i, "other", 0) end
    T.eq(ok(conn:insert(b2)), 50)
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n, SUM(v = 'other') AS o FROM idem_t")), { n = 150, o = 50 })
    -- without on_duplicate a duplicate is an error
    local plain = mysql.batch("idem_t", { "id", "v", "w" })
    plain:add(1, "x", 1)
    local n, err, code = conn:insert(plain)
    T.eq({ n, err, code }, { nil, "mysql.insert: Duplicate entry '1' for key 'PRIMARY' (1062)", 1062 })
    -- "update": non-key columns take the new values; 2 per changed row, 0 per unchanged one
    local up = mysql.batch("idem_t", { "id", "v", "w" }, { on_duplicate = "update" })
    up:add(1, "new", 1000)
    up:add(2, "v2", 2)          -- unchanged
    up:add(500, "fresh", 5)     -- new
    T.eq(ok(conn:insert(up)), 2 + 0 + 1)
    T.eq(ok(conn:query("SELECT * FROM idem_t WHERE id IN (1, 2, 500) ORDER BY id")),
         { { id = 1, v = "new", w = 1000 }, { id = 2, v = "v2", w = 2 }, { id = 500, v = "fresh", w = 5 } })
    -- keys = {...}: those columns are left alone
    local up2 = mysql.batch("idem_t", { "id", "v", "w" }, { on_duplicate = "update", keys = { "id", "w" } })
    up2:add(1, "newer", 7)
    T.eq(ok(conn:insert(up2)), 2)
    T.eq(ok(conn:query_one("SELECT * FROM idem_t WHERE id = 1")), { id = 1, v = "newer", w = 1000 })
end)

T.test("batch: larger than max_bytes is split; all rows arrive", function()
    ok(conn:execute("DROP TABLE IF EXISTS split_t"))
    ok(conn:execute("CREATE TABLE split_t (id INT PRIMARY KEY, v LONGTEXT)"))
    local b = mysql.batch("split_t", { "id", "v" }, { max_bytes = 1024 })
    for i = 1000, 1199 do b:add(i, "xxxxxxxxxx") end
    local row = #"(1000,'xxxxxxxxxx'),"
    T.eq(b:bytes(), 200 * row)
    local head = #"INSERT INTO `split_t` (`id`,`v`) VALUES "
    local per = (1024 - head + 1) // row                 -- rows that fit in 1024 bytes
    local want = (200 + per - 1) // per
    T.ok(want > 1, "several statements expected")
    local before = com_insert(conn)
    T.eq(ok(conn:insert(b)), 200)
    T.eq(com_insert(conn) - before, want)
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n, MIN(id) AS lo, MAX(id) AS hi FROM split_t")),
         { n = 200, lo = 1000, hi = 1199 })
    -- a row larger than max_bytes goes alone
    local b2 = mysql.batch("split_t", { "id", "v" }, { max_bytes = 1024 })
    b2:add(1, "a")
    b2:add(2, ("z"):rep(5000))
    b2:add(3, "c")
    before = com_insert(conn)
    T.eq(ok(conn:insert(b2)), 3)
    T.eq(com_insert(conn) - before, 3)
    T.eq(ok(conn:query_one("SELECT LENGTH(v) AS n FROM split_t WHERE id = 2")), { n = 5000 })
end)

T.test("batch: 150 long column names with backticks (statements past the Lua buffer size)", function()
    local lc = connect({ local_infile = true })
    local cols, defs, vals = { "id" }, { "id INT PRIMARY KEY" }, { 1 }
    for i = 1, 150 do
        cols[#cols + 1] = "a rather long column name `" .. i
        defs[#defs + 1] = "`a rather long column name ``" .. i .. "` INT"
        vals[#vals + 1] = i
    end
    ok(lc:execute("DROP TABLE IF EXISTS wide_t"))
    ok(lc:execute("CREATE TABLE wide_t (" .. table.concat(defs, ",") .. ")"))
    for k, opts in ipairs({ {}, { on_duplicate = "update" }, { on_duplicate = "ignore", load = true } }) do
        local b = mysql.batch("wide_t", cols, opts)
        vals[1] = k
        b:add(table.unpack(vals))
        T.eq(ok(lc:insert(b)), 1, "options #" .. k)
    end
    T.eq(ok(lc:query_one("SELECT COUNT(*) AS n, SUM(`a rather long column name ``150`) AS s FROM wide_t")),
         { n = 3, s = 450 })
    lc:close()
end)

T.test("batch: misuse raises, a failed add leaves the batch unchanged", function()
    local b = mysql.batch("t`x", { "a", "b" })
    T.eq(raised(function() b:add(1) end), "mysql.batch.add: expected 2 values, got 1")
    T.eq(raised(function() b:add(1, 2, 3) end), "mysql.batch.add: expected 2 values, got 3")
    T.eq(raised(function() b:add(1, {}) end),
          "mysql.batch.add: bad value #2 (string, number, boolean or nil expected, got table)")
    T.eq(raised(function() b:add(0 / 0, 1) end), "mysql.batch.add: bad value #1 (inf and nan have no SQL literal)")
    T.eq(b:count(), 0)
    T.eq(b:bytes(), 0)
    b:add(1, "x")
    T.eq(b:bytes(), #"(1,'x'),")
    -- the backtick in the table name is doubled: the statement names table `t``x`
    local n, err, code = conn:insert(b)
    T.eq({ n, err, code }, { nil, "mysql.insert: Table 'lproc.t`x' doesn't exist (1146)", 1146 })
    T.eq(raised(function() mysql.batch("t", {}) end), "mysql.batch: columns must be a non-empty array of names")
    T.eq(raised(function() mysql.batch("t", { "a", "" }) end),
          "mysql.batch: identifiers must be non-empty and free of NUL bytes")
    T.eq(raised(function() mysql.batch("t", { "a" }, { on_duplicate = "replace" }) end),
          "mysql.batch: on_duplicate must be \"ignore\", \"update\" or nil")
    T.eq(raised(function() mysql.batch("t", { "a" }, { max_bytes = 10 }) end),
          "mysql.batch: max_bytes must be an integer >= 256")
    T.eq(raised(function() conn:insert({}) end), "bad argument #1 to 'insert' (lproc.mysql.batch expected, got table)")
    b:close()
    b:close()
    T.eq(tostring(b), "mysql.batch (closed)")
    T.eq(raised(function() b:add(1, 2) end), "mysql.batch.add: batch is closed")
    T.eq(raised(function() b:count() end), "mysql.batch.count: batch is closed")
    T.eq(raised(function() b:clear() end), "mysql.batch.clear: batch is closed")
    T.eq(raised(function() conn:insert(b) end), "mysql.insert: batch is closed")
end)

T.test("transactions: rollback discards, commit keeps", function()
    ok(conn:execute("DROP TABLE IF EXISTS tx_t"))
    ok(conn:execute("CREATE TABLE tx_t (id INT PRIMARY KEY) ENGINE=InnoDB"))
    local b = mysql.batch("tx_t", { "id" })
    for i = 1, 10 do b:add(i) end
    T.eq(conn:begin(), true)
    T.eq(ok(conn:insert(b)), 10)
    T.eq(ok(conn:execute("INSERT INTO tx_t VALUES (?)", 11)), 1)
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n FROM tx_t")), { n = 11 })
    T.eq(conn:rollback(), true)
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n FROM tx_t")), { n = 0 })
    -- another connection does not see uncommitted rows
    local other <close> = connect()
    T.eq(conn:begin(), true)
    T.eq(ok(conn:insert(b)), 10)
    T.eq(ok(other:query_one("SELECT COUNT(*) AS n FROM tx_t")), { n = 0 })
    T.eq(conn:commit(), true)
    T.eq(ok(other:query_one("SELECT COUNT(*) AS n FROM tx_t")), { n = 10 })
end)

T.test("NO_BACKSLASH_ESCAPES: removed at connect, refused if set again", function()
    root_sql("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    local c, err = mysql.connect(URL)
    root_sql("SET GLOBAL sql_mode = REPLACE(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES', '')")
    T.ok(c, err)
    local r = ok(c:query_one("SELECT @@SESSION.sql_mode AS m, ? AS v", "a\\'b"))
    T.eq(r.v, "a\\'b")
    T.eq(r.m:find("NO_BACKSLASH_ESCAPES", 1, true), nil)
    T.ok(r.m:find("STRICT_TRANS_TABLES", 1, true), "the other modes stay: " .. r.m)
    ok(c:execute("SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"))
    T.eq(raised(function() c:execute("SELECT ?", "x") end),
          "mysql.execute: the session's sql_mode has NO_BACKSLASH_ESCAPES; values cannot be sent")
    local b = mysql.batch("q_t", { "id" })
    b:add(1)
    T.eq(raised(function() c:insert(b) end),
          "mysql.insert: the session's sql_mode has NO_BACKSLASH_ESCAPES; values cannot be sent")
    T.eq(ok(c:query_one("SELECT 'a\\b' AS v")), { v = "a\\b" })   -- no values: allowed
    c:close()
end)

T.test("local_infile: off by default; when on, only load batches are served, never a file", function()
    ok(conn:execute("DROP TABLE IF EXISTS infile_t"))
    ok(conn:execute("CREATE TABLE infile_t (id INT PRIMARY KEY, v TEXT)"))
    local path = T.env("LPROC_TEST_TMP") .. "/infile.tsv"
    local f = assert(io.open(path, "wb"))
    f:write("7\tseven\n8\t\\N\n")
    f:close()
    local sql = "LOAD DATA LOCAL INFILE ? INTO TABLE infile_t"
    local n, err, code = conn:execute(sql, path)
    T.eq({ n, err, code }, { nil, "mysql.execute: The used command is not allowed because the MariaDB " ..
        "server or client has disabled the local infile capability (4166)", 4166 })
    local c <close> = connect({ local_infile = true })
    T.eq({ c:execute(sql, path) },
         { nil, "mysql.execute: lproc.mysql sends no file: LOAD DATA LOCAL serves only batches (2000)", 2000 })
    local b = mysql.batch("infile_t", { "id", "v" }, { on_duplicate = "ignore", load = true })
    b:add(7, "seven")
    b:add(8, nil)
    T.eq(ok(c:insert(b)), 2)
    T.eq(ok(c:query("SELECT * FROM infile_t ORDER BY id")), { { id = 7, v = "seven" }, { id = 8 } })
end)

T.test("a read timeout detects a server that does not answer", function()
    local c = connect({ read_timeout = 1, ssl_mode = "disabled" })
    local t0 = os.time()
    local n, err, code = c:query("SELECT SLEEP(5)")
    T.eq({ n, err, code }, { nil, "mysql.query: Lost connection to server during query (2013)", 2013 })
    T.ok(os.time() - t0 <= 3, "returned after about 1 s")
    T.eq(mysql.is_connection_error(code), true)
    c:close()
end)

T.test("wrong password: exact message, 1045, password absent", function()
    local c, err, code = mysql.connect("mysql://lproc:Wr0ng-pa55@127.0.0.1:" .. PORT .. "/lproc")
    T.eq({ c, err, code }, { nil, "mysql.connect: " .. TARGET ..
        ": Access denied for user 'lproc'@'127.0.0.1' (using password: YES) (1045)", 1045 })
    T.eq(mysql.is_connection_error(code), false)
    -- the password given in opts overrides the URL's
    c = mysql.connect("mysql://lproc:Wr0ng-pa55@127.0.0.1:" .. PORT .. "/lproc", { password = PASSWORD })
    T.ok(c, "opts.password")
    c:close()
    -- even when the server echoes it (here as the user name), it is masked
    c, err, code = mysql.connect("mysql://echo-me-s3cret:echo-me-s3cret@127.0.0.1:" .. PORT .. "/lproc")
    T.eq({ c, err, code }, { nil, "mysql.connect: " .. TARGET ..
        ": Access denied for user '***'@'127.0.0.1' (using password: YES) (1045)", 1045 })
end)

T.test("unknown database: 1049", function()
    local c, err, code = mysql.connect("mysql://lproc:" .. PASSWORD .. "@127.0.0.1:" .. PORT .. "/lproc_test")
    T.eq({ c, err, code }, { nil, "mysql.connect: " .. TARGET .. ": Unknown database 'lproc_test' (1049)", 1049 })
    T.eq(err:find(PASSWORD, 1, true), nil)
end)

T.test("connection refused: 2002, a connection error", function()
    local c, err, code = mysql.connect("mysql://lproc:" .. PASSWORD .. "@127.0.0.1:" .. CLOSED_PORT .. "/lproc",
                                       { connect_timeout = 2 })
    T.eq(c, nil)
    T.ok(code == 2002 or code == 2003, "code " .. tostring(code))
    T.ok(err:find("^mysql.connect: 127.0.0.1:" .. CLOSED_PORT .. ": Can't connect to server on '127.0.0.1' %(%d+%) %(200[23]%)$"), err)
    T.eq(mysql.is_connection_error(code), true)
    T.eq(err:find(PASSWORD, 1, true), nil)
end)

T.test("TLS: required, verify_ca and verify_identity against the test CA", function()
    local ca = T.env("LPROC_TEST_TLS_CA")
    local function cipher(c)
        local row = ok(c:query_one("SHOW SESSION STATUS LIKE 'Ssl_cipher'"))
        c:close()
        return row.Value
    end
    T.ok(cipher(ok(mysql.connect(URL .. "?ssl-mode=REQUIRED"))) ~= "", "required uses TLS")
    T.ok(cipher(ok(mysql.connect(URL, { ssl_mode = "verify_ca", ssl_ca = ca }))) ~= "", "verify_ca")
    T.ok(cipher(ok(mysql.connect(URL, { ssl_mode = "verify_identity", ssl_ca = ca }))) ~= "",
        "verify_identity (the certificate names 127.0.0.1)")
    T.eq(cipher(connect({ ssl_mode = "disabled" })), "", "disabled: plain text")
    -- A CA that did not sign the server's certificate is refused.
    local c, err, code = mysql.connect(URL, { ssl_mode = "verify_ca", ssl_ca = "/etc/ssl/certs/ca-certificates.crt",
                                              connect_timeout = 3 })
    T.eq({ c, code }, { nil, 2026 }, "wrong CA: " .. tostring(err))
    T.eq(err:find(PASSWORD, 1, true), nil)
end)

T.test("a row larger than max_allowed_packet: refused before it is sent, the connection stays", function()
    local was = ok(conn:query_one("SELECT @@GLOBAL.max_allowed_packet AS m")).m
    root_sql("SET GLOBAL max_allowed_packet = 1048576")
    local small = connect()       -- a session takes the global value when it starts
    root_sql("SET GLOBAL max_allowed_packet = " .. was)
    ok(small:execute("DROP TABLE IF EXISTS packet_t"))
    ok(small:execute("CREATE TABLE packet_t (id INT PRIMARY KEY, v MEDIUMBLOB)"))
    local b = mysql.batch("packet_t", { "id", "v" }, { on_duplicate = "ignore" })
    b:add(1, "fits")
    b:add(2, string.rep("x", 1100000))
    T.eq(small:begin(), true)
    local n, err, code = small:insert(b)
    T.eq(n, nil)
    T.eq(code, 1153)
    T.ok(err:find("^mysql.insert: one row makes an INSERT of 11000%d%d bytes, more than the server's "
        .. "max_allowed_packet %(1048576 bytes%): raise it, or turn local_infile on %(1153%)$"), err)
    T.eq(mysql.is_setup_error(code), true)
    T.eq(mysql.is_transient_error(code), false)
    T.eq(small:rollback(), true)
    T.eq(ok(small:query("SELECT COUNT(*) AS n FROM packet_t")), { { n = 0 } })
    -- just under the limit goes in
    b:clear()
    b:add(3, string.rep("y", 1048576 - 200))
    T.eq(ok(small:insert(b)), 1)
    small:close()
end)

T.test("is_connection_error", function()
    for _, code in ipairs { 2002, 2003, 2006, 2013, 2026, 2055, 1053, 1927, 1040 } do
        T.eq(mysql.is_connection_error(code), true, "code " .. code)
    end
    for _, code in ipairs { 1045, 1049, 1062, 1064, 1146, 1213, 0 } do
        T.eq(mysql.is_connection_error(code), false, "code " .. code)
    end
    T.eq(mysql.is_connection_error(nil), false)
end)

T.test("is_transient_error: connection errors, locks, a read-only or full server", function()
    for _, code in ipairs { 2006, 2013, 1040, 1205, 1213, 1206, 1290, 1836, 1114, 1021 } do
        T.eq(mysql.is_transient_error(code), true, "code " .. code)
    end
    -- Errors in the data or the statement, and mistakes: waiting would not cure them.
    for _, code in ipairs { 1045, 1049, 1062, 1064, 1146, 1264, 1366, 1406, 0 } do
        T.eq(mysql.is_transient_error(code), false, "code " .. code)
    end
    T.eq(mysql.is_transient_error(nil), false)
    T.err(function() mysql.is_transient_error("x") end, "bad argument #1 to 'is_transient_error' (number expected, got string)")
end)

T.test("is_setup_error: tables, columns, grants, engines", function()
    for _, code in ipairs { 1146, 1054, 1142, 1143, 1044, 1045, 1227, 1049, 1036, 1364, 1064 } do
        T.eq(mysql.is_setup_error(code), true, "code " .. code)
    end
    for _, code in ipairs { 2013, 1205, 1213, 1062, 1264, 1366, 1406, 0 } do
        T.eq(mysql.is_setup_error(code), false, "code " .. code)
    end
    T.eq(mysql.is_setup_error(nil), false)
end)

T.test("closed handle: every method raises naming itself", function()
    local c = connect()
    c:close()
    for _, m in ipairs { "execute", "query", "query_one" } do
        T.eq(raised(function() c[m](c, "SELECT 1") end), "mysql." .. m .. ": connection is closed")
    end
    for _, m in ipairs { "begin", "commit", "rollback", "ping", "server_version" } do
        T.eq(raised(function() c[m](c) end), "mysql." .. m .. ": connection is closed")
    end
    T.eq(raised(function() c:escape("x") end), "mysql.escape: connection is closed")
    T.eq(raised(function() c:insert(mysql.batch("t", { "a" })) end), "mysql.insert: connection is closed")
    T.eq(raised(function() conn.execute({}, "SELECT 1") end),
          "bad argument #1 to 'execute' (lproc.mysql.connection expected, got table)")
end)

-- Last: stops and resumes the server.
T.test("server restart: old connection fails with a connection error, a new one works", function()
    ok(conn:execute("DROP TABLE IF EXISTS restart_t"))
    ok(conn:execute("CREATE TABLE restart_t (id INT PRIMARY KEY)"))
    local b = mysql.batch("restart_t", { "id" }, { on_duplicate = "ignore" })
    for i = 1, 50 do b:add(i) end
    T.ok(os.execute("tests/servers.sh stop mariadb"), "stop")
    local n, err, code = conn:insert(b)
    T.eq(n, nil)
    T.ok(mysql.is_connection_error(code), "insert after stop: " .. tostring(err))
    n, err, code = conn:ping()
    T.eq(n, nil)
    T.ok(mysql.is_connection_error(code), "ping after stop: " .. tostring(err))
    local c
    c, err, code = mysql.connect(URL, { connect_timeout = 2 })
    T.eq(c, nil)
    T.ok(mysql.is_connection_error(code), "connect while stopped: " .. tostring(err))
    T.ok(os.execute("tests/servers.sh resume mariadb"), "resume")
    n, err, code = conn:ping()   -- no automatic reconnection
    T.eq(n, nil)
    T.ok(mysql.is_connection_error(code), "old connection after resume: " .. tostring(err))
    conn:close()
    conn = connect()
    T.eq(ok(conn:insert(b)), 50)   -- the batch survived and is retried on the new connection
    T.eq(ok(conn:query_one("SELECT COUNT(*) AS n FROM restart_t")), { n = 50 })
    conn:close()
end)

T.done()
