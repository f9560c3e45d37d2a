-- logfmt_test.lua: lproc.logfmt, the format compiler and the engine underneath the rules.
local T = require "testing"
local logfmt = require "lproc.logfmt"

-- The message of the error fn raises, without the "chunk:line: " position Lua adds.
local function errmsg(fn)
    local ok, e = pcall(fn)
    T.ok(not ok, "an error")
    return (tostring(e):gsub("^[^\n:]*:%d+: ", ""))
end

local COMBINED = [[$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"]]
local QUOTED = [[((?:[^"\\]++|\\.)*+)]]

T.test("combined compiles to one anchored pattern, one group per variable", function()
    local f = logfmt.compile(COMBINED)
    T.eq(f:pattern(), [[([0-9A-Fa-f:.]++) - ([^ ]*+) \[(\d\d/[A-Za-z]{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "]]
        .. QUOTED .. [[" (\d{3}) (\d++|-) "]] .. QUOTED .. [[" "]] .. QUOTED .. [["]])
    T.eq(f:variables(), { "remote_addr", "remote_user", "time_local", "request", "status",
        "body_bytes_sent", "http_referer", "http_user_agent" })
    T.eq(tostring(f), "logfmt.format (8 variables)")
end)

-- Each known variable's sub-pattern, as the only thing in a format.
local KNOWN = {
    remote_addr = "[0-9A-Fa-f:.]++", realip_remote_addr = "[0-9A-Fa-f:.]++",
    server_addr = "[0-9A-Fa-f:.]++",
    time_local = [[\d\d/[A-Za-z]{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}]],
    time_iso8601 = [[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d|Z)]],
    msec = [[\d++(?:\.\d++)?]],
    status = [[\d{3}]],
    body_bytes_sent = [[\d++|-]], bytes_sent = [[\d++|-]], request_length = [[\d++|-]],
    remote_port = [[\d++|-]], server_port = [[\d++|-]],
    request_time = [[\d++(?:\.\d++)?|-]], gzip_ratio = [[\d++(?:\.\d++)?|-]],
    connection = [[\d++]], connection_requests = [[\d++]], pid = [[\d++]],
    proxy_session = "[^ ]{15}|-",
    pipe = "[p.]",
    -- text variables: at the end of a format, the rest of the line
    remote_user = ".*+", request = ".*+", request_method = ".*+", request_uri = ".*+",
    server_protocol = ".*+", http_referer = ".*+", http_user_agent = ".*+", host = ".*+",
    server_name = ".*+", http_host = ".*+", upstream_cache_status = ".*+",
}

T.test("every known variable has its sub-pattern", function()
    for name, want in pairs(KNOWN) do
        T.eq(logfmt.compile("$" .. name):pattern(), "(" .. want .. ")", name)
    end
end)

T.test("a text variable's sub-pattern depends on its delimiters", function()
    local cases = {
        { [["$http_x_forwarded_for"]], [["]] .. QUOTED .. [["]] },
        { "$remote_user [", [[([^ ]*+) \[]] },
        { "$foo]", [=[([^\]]*+)\]]=] },
        { "$foo^", [[([^\^]*+)\^]] },
        { "$foo-x", [[([^\-]*+)-x]] },
        { "$foo\\", [[([^\\]*+)\\]] },
        { "$foo\t", [[([^\x09]*+)\x09]] },
        { '$foo"', [[([^"]*+)"]] },
        { "$a$b", "(.*?)(.*+)" },
        { "${a}b|", [[([^b]*+)b\|]] },
        { "x.y*z(1)?", [[x\.y\*z\(1\)\?]] },
        { "\0\255", [[\x00\xff]] },
    }
    for _, c in ipairs(cases) do T.eq(logfmt.compile(c[1]):pattern(), c[2], c[1]) end
end)

T.test("an address followed by ':' or '.' gives bytes back ($remote_addr:$remote_port)", function()
    T.eq(logfmt.compile("$remote_addr:$remote_port"):pattern(), [[([0-9A-Fa-f:.]+):(\d++|-)]])
    T.eq(logfmt.compile("$server_addr."):pattern(), [[([0-9A-Fa-f:.]+)\.]])
    local f = logfmt.compile("$remote_addr:$remote_port $server_addr:$server_port")
    T.eq(f:match("203.0.113.9:51234 2001:db8::1:443"),
        { remote_addr = "203.0.113.9", remote_port = "51234", server_addr = "2001:db8::1", server_port = "443" })
    T.eq(f:match("203.0.113.9: 1.2.3.4:5"), nil, "a port is required")
end)

T.test("match returns every variable by name; the first occurrence wins", function()
    local f = logfmt.compile(COMBINED)
    local line = [[203.0.113.9 - alice [01/Nov/2022:00:00:00 -0500] "GET /a?b=1 HTTP/1.1" 200 7259 "-" "UA \x22q\x22 \"r\" \\ end"]]
    T.eq(f:match(line), {
        remote_addr = "203.0.113.9", remote_user = "alice", time_local = "01/Nov/2022:00:00:00 -0500",
        request = "GET /a?b=1 HTTP/1.1", status = "200", body_bytes_sent = "7259", http_referer = "-",
        http_user_agent = [[UA \x22q\x22 \"r\" \\ end]],
    })
    local g = logfmt.compile("$a $b $a")
    T.eq(g:variables(), { "a", "b", "a" })
    T.eq(g:match("1 2 3"), { a = "1", b = "2" })
end)

T.test("match: typed variables refuse what they cannot be", function()
    local f = logfmt.compile(COMBINED)
    local ok = [[1.2.3.4 - - [01/Nov/2022:00:00:00 -0500] "GET / HTTP/1.1" 200 - "-" "-"]]
    T.ok(f:match(ok), "the base line matches")
    T.eq(f:match((ok:gsub(" 200 ", " 99999 "))), nil, "status of 5 digits")
    T.eq(f:match((ok:gsub(" 200 ", " 20 "))), nil, "status of 2 digits")
    T.eq(f:match((ok:gsub(" %- \"%-\" \"%-\"$", ' 12k "-" "-"'))), nil, "size with a letter")
    T.eq(f:match((ok:gsub("^1%.2%.3%.4", "host.example"))), nil, "a name as remote_addr")
    T.eq(f:match((ok:gsub("2022:", "22:"))), nil, "a two-digit year")
    T.eq(f:match(ok .. " extra"), nil, "anchored at the end")
    T.eq(f:match("x" .. ok), nil, "anchored at the start")
    T.eq(f:match((ok:gsub('"GET / HTTP/1.1"', '"GET /"x HTTP/1.1"'))), nil, "a bare quote inside quotes")
    T.eq(f:match((ok:gsub('"%-"$', '"a\0b\nc"'))).http_user_agent, "a\0b\nc", "NUL and newline inside quotes")
    T.eq(logfmt.compile("$proxy_session|"):match("ABCDEFGHIJKLMNO|"), { proxy_session = "ABCDEFGHIJKLMNO" })
    T.eq(logfmt.compile("$proxy_session|"):match("ABCDEFGHIJKLMN|"), nil, "14 characters")
    T.eq(logfmt.compile("$proxy_session|"):match("-|"), { proxy_session = "-" })
end)

T.test("format errors name the token and its byte", function()
    T.eq(errmsg(function() logfmt.compile("") end), "logfmt.compile: empty format")
    T.eq(errmsg(function() logfmt.compile("ab $ cd") end),
        "logfmt.compile: '$' without a variable name at byte 4")
    T.eq(errmsg(function() logfmt.compile("a ${foo") end), "logfmt.compile: unterminated '${' at byte 3")
    T.eq(errmsg(function() logfmt.compile("${}") end), "logfmt.compile: '$' without a variable name at byte 1")
    T.eq(errmsg(function() logfmt.compile("x ${a-b}") end), "logfmt.compile: bad variable name '${a-b}' at byte 3")
    local many = {}
    for i = 1, 65 do many[i] = "$v" .. i end
    T.eq(errmsg(function() logfmt.compile(table.concat(many, " ")) end),
        "logfmt.compile: too many variables (max 64) at '$v65', byte 312")
    T.eq(errmsg(function() logfmt.compile({}) end), "bad argument #1 to 'compile' (string expected, got table)")
end)

T.test("a closed format refuses every method; close twice is fine", function()
    local f = logfmt.compile("$status")
    f:close()
    f:close()
    T.eq(tostring(f), "logfmt.format (closed)")
    T.eq(errmsg(function() f:pattern() end), "logfmt.pattern: format is closed")
    T.eq(errmsg(function() f:variables() end), "logfmt.variables: format is closed")
    T.eq(errmsg(function() f:match("200") end), "logfmt.match: format is closed")
end)

T.test("logfmt.columns lists the standard columns in order with their SQL types", function()
    local got = {}
    for i, c in ipairs(logfmt.columns()) do got[i] = c.name .. " " .. c.type .. (c.null and "" or " NOT NULL") end
    T.eq(got, {
        "id CHAR(64) NOT NULL", "timestamp DATETIME", "year SMALLINT", "month TINYINT", "day TINYINT",
        "day_of_week VARCHAR(9)", "time TIME", "ip VARCHAR(64)", "country VARCHAR(128)",
        "country_code CHAR(2)", "city VARCHAR(128)", "session VARCHAR(255)", "user VARCHAR(255)",
        "is_email BOOLEAN NOT NULL", "email_domain VARCHAR(255)", "rest_method VARCHAR(32)",
        "url MEDIUMTEXT", "schema VARCHAR(32)", "host VARCHAR(255)", "port SMALLINT UNSIGNED",
        "path MEDIUMTEXT", "query MEDIUMTEXT", "rest_session VARCHAR(255)", "protocol VARCHAR(16)",
        "status SMALLINT UNSIGNED", "status_verbose VARCHAR(64)", "size_bytes BIGINT UNSIGNED",
        "size_kilo_bytes DECIMAL(26,10)", "size_mega_bytes DECIMAL(33,20)", "referrer MEDIUMTEXT",
        "user_agent MEDIUMTEXT", "browser VARCHAR(64)", "os VARCHAR(64)", "device VARCHAR(16)",
        "request_time DECIMAL(12,3)", "vhost VARCHAR(255)",
    })
end)

local function engine(extra)
    local opts = { formats = { { name = "combined", format = COMBINED } } }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return logfmt.engine(opts)
end

T.test("engine option errors", function()
    local cases = {
        { {}, "logfmt.engine: formats must be a non-empty array of {name=, format=}" },
        { { formats = { "x" } }, "logfmt.engine: formats[1] must be a table {name=, format=}" },
        { { formats = { { name = "a" } } }, "logfmt.engine: formats[1] must have string name and format" },
        { { formats = { { name = "bad", format = "$ " } } },
            "logfmt.engine: format 'bad': '$' without a variable name at byte 1" },
        { { formats = { { name = "a", format = "$status" } }, columns = { { name = "X", type = "INT" } } },
            "logfmt.engine: column 'X': bad name (want [a-z][a-z0-9_]*, at most 64 bytes)" },
        { { formats = { { name = "a", format = "$status" } }, columns = { { name = "x", type = "GEOMETRY" } } },
            "logfmt.engine: column 'x': unsupported SQL type 'GEOMETRY'" },
        { { formats = { { name = "a", format = "$status" } }, columns = { { name = "x", type = "VARCHAR" } } },
            "logfmt.engine: column 'x': unsupported SQL type 'VARCHAR'" },
        { { formats = { { name = "a", format = "$status" } }, columns = { { name = "url", type = "TEXT" } } },
            "logfmt.engine: column 'url': defined twice" },
        { { formats = { { name = "a", format = "$status" } }, ua = { browser = { { "x(", "X" } } } },
            "logfmt.engine: ua.browser[1]: bad pattern: missing closing parenthesis at offset 2" },
        { { formats = { { name = "a", format = "$status" } }, ua = { os = { { "x" } } } },
            "logfmt.engine: ua.os[1] must be {pattern, name} (strings)" },
        { { formats = { { name = "a", format = "$status" } }, map = 1 },
            "logfmt.engine: map must be a function" },
        { { formats = { { name = "a", format = "$status" } }, max_line = 0 },
            "logfmt.engine: max_line must be an integer from 1 to 16777216" },
        { { formats = { { name = "a", format = "$status" } }, ua_cache = -1 },
            "logfmt.engine: ua_cache must be an integer from 0 to 1048576" },
    }
    for _, c in ipairs(cases) do T.eq(errmsg(function() logfmt.engine(c[1]) end), c[2]) end
end)

T.test("process and json give the same result from one code path", function()
    local e = engine()
    local line = [[1.2.3.4 - - [01/Nov/2022:00:00:00 -0500] "GET /x HTTP/1.1" 404 0 "-" "-"]]
    local r = table.pack(e:process(line, "id1"))
    T.eq(r.n, 37)
    T.eq({ r[1], r[2], r[3], r[9], r[17], r[18], r[26], r[27], r[28], r[29], r[30] },
        { true, "id1", "2022-11-01 05:00:00", "1.2.3.4", "GET", "/x", 404, "Not Found", 0, "0", "0" })
    T.eq(e:json("nope", "id2"), [[{"_table":"clean_log_reject","id":"id2","reason":"no format matches","line":"nope"}]])
    T.eq(table.pack(e:process("nope", "id2")), { n = 2, false, "no format matches" })
    local bound = e:bind("json")
    T.eq(bound(nil, "nope", "id3"), e:json("nope", "id3"))
    T.eq(e:stats(), { lines = 5, rows = 1, rejects = 4, map_errors = 0, ua_cache_hits = 0,
        ua_cache_misses = 0, geo_cache_hits = 0, geo_cache_misses = 0 })
end)

T.test("decimal columns are exact; sizes beyond 2^63 - 1 are rejects", function()
    local e = logfmt.engine{ formats = { { name = "s", format = "$body_bytes_sent $request_time" } } }
    local function cols(line)
        local r = table.pack(e:process(line, "i"))
        if not r[1] then return r[2] end
        return { r[28], r[29], r[30], r[36] }
    end
    T.eq(cols("7259 0.123"), { 7259, "7.0888671875", "0.00692272186279296875", "0.123" })
    T.eq(cols("1048576 10"), { 1048576, "1024", "1", "10" })
    T.eq(cols("- 0.0005"), { 0, "0", "0", "0.001" })
    T.eq(cols("1 000.9994"), { 1, "0.0009765625", "0.00000095367431640625", "0.999" })
    T.eq(cols("9223372036854775807 -"), { math.maxinteger, "9007199254740991.9990234375",
        "8796093022207.99999904632568359375", nil })
    T.eq(cols("9223372036854775808 1"), "$body_bytes_sent out of range (9223372036854775808)")
    T.eq(cols("18446744073709551616 1"), "$body_bytes_sent out of range (18446744073709551616)")
    T.eq(cols("1 1234567890"), "$request_time out of range (1234567890)")
    T.eq(cols("1 999999999.9996"), "$request_time out of range (999999999.9996)")
    T.eq(cols("1 999999999.9994"), { 1, "0.0009765625", "0.00000095367431640625", "999999999.999" })
end)

T.test("times: offsets, day and year boundaries, leap days, impossible dates", function()
    local e = logfmt.engine{ formats = { { name = "t", format = "[$time_local]" }, { name = "i", format = "$time_iso8601" },
        { name = "m", format = "msec=$msec" } } }
    local function t(line)
        local r = table.pack(e:process(line, "i"))
        if not r[1] then return r[2] end
        return table.concat({ r[3], r[4], r[5], r[6], r[7], r[8] }, " ")
    end
    T.eq(t("[01/Nov/2022:00:00:00 -0500]"), "2022-11-01 05:00:00 2022 11 1 Tuesday 05:00:00")
    T.eq(t("[31/Dec/2022:23:30:00 -0100]"), "2023-01-01 00:30:00 2023 1 1 Sunday 00:30:00")
    T.eq(t("[01/Jan/2023:05:00:00 +0530]"), "2022-12-31 23:30:00 2022 12 31 Saturday 23:30:00")
    T.eq(t("[29/Feb/2024:12:00:00 +0000]"), "2024-02-29 12:00:00 2024 2 29 Thursday 12:00:00")
    T.eq(t("[29/Feb/2000:00:00:00 +0000]"), "2000-02-29 00:00:00 2000 2 29 Tuesday 00:00:00")
    T.eq(t("[01/nov/2022:00:00:00 +0000]"), "2022-11-01 00:00:00 2022 11 1 Tuesday 00:00:00")
    T.eq(t("2022-11-01T00:00:00-05:00"), "2022-11-01 05:00:00 2022 11 1 Tuesday 05:00:00")
    T.eq(t("2022-11-01T00:00:00Z"), "2022-11-01 00:00:00 2022 11 1 Tuesday 00:00:00")
    T.eq(t("msec=1667278800.123"), "2022-11-01 05:00:00 2022 11 1 Tuesday 05:00:00")
    T.eq(t("[30/Feb/2022:00:00:00 +0000]"), "impossible date in $time_local (30/Feb/2022:00:00:00 +0000)")
    T.eq(t("[29/Feb/2023:00:00:00 +0000]"), "impossible date in $time_local (29/Feb/2023:00:00:00 +0000)")
    T.eq(t("[29/Feb/1900:00:00:00 +0000]"), "impossible date in $time_local (29/Feb/1900:00:00:00 +0000)")
    T.eq(t("[31/Apr/2022:00:00:00 +0000]"), "impossible date in $time_local (31/Apr/2022:00:00:00 +0000)")
    T.eq(t("[00/Apr/2022:00:00:00 +0000]"), "impossible date in $time_local (00/Apr/2022:00:00:00 +0000)")
    T.eq(t("[01/Abc/2022:00:00:00 +0000]"), "impossible date in $time_local (01/Abc/2022:00:00:00 +0000)")
    T.eq(t("[01/Jan/2022:24:00:00 +0000]"), "impossible date in $time_local (01/Jan/2022:24:00:00 +0000)")
    T.eq(t("[01/Jan/2022:23:60:00 +0000]"), "impossible date in $time_local (01/Jan/2022:23:60:00 +0000)")
    T.eq(t("[01/Jan/2022:23:59:60 +0000]"), "impossible date in $time_local (01/Jan/2022:23:59:60 +0000)")
    T.eq(t("[01/Jan/2022:00:00:00 +0099]"), "impossible date in $time_local (01/Jan/2022:00:00:00 +0099)")
    T.eq(t("2022-13-01T00:00:00Z"), "impossible date in $time_iso8601 (2022-13-01T00:00:00Z)")
    T.eq(t("[01/Jan/0999:00:00:00 +0000]"), "date out of range in $time_local (01/Jan/0999:00:00:00 +0000)")
    T.eq(t("[31/Dec/9999:23:00:00 -0100]"), "date out of range in $time_local (31/Dec/9999:23:00:00 -0100)")
    T.eq(t("msec=99999999999999"), "date out of range in $msec (99999999999999)")
end)

T.test("parse_url: the URL split of a request target, as lines get it", function()
    local e = engine()
    local function url(target, connect) return table.pack(e:parse_url(target, connect)) end
    local function want(...) return table.pack(...) end
    T.eq(url("HTTP://User:pw@EXample.COM:8080/a;jsessionid=XYZ/b?q=1&sid=2#frag"),
        want("http", "example.com", 8080, "/a;jsessionid=XYZ/b", "q=1&sid=2", "XYZ"))
    T.eq(url("/p?phpsessid=Q%20"), want(nil, nil, nil, "/p", "phpsessid=Q%20", "Q%20"))
    T.eq(url("http://[2001:DB8::1]:443"), want("http", "2001:db8::1", 443, nil, nil, nil))
    T.eq(url("http://h:65536/x"), want("http", nil, nil, "/x", nil, nil), "a port out of range")
    T.eq(url("*"), want(nil, nil, nil, "*", nil, nil))
    T.eq(url("example.com:443"), want(nil, nil, nil, nil, nil, nil), "authority form without CONNECT")
    T.eq(url("example.com:443", true), want(nil, "example.com", 443, nil, nil, nil))
    T.eq(url("/\255\0?\27[2J"), want(nil, nil, nil, "/\u{FFFD}\u{FFFD}", "\u{FFFD}[2J", nil))
    T.eq(url(""), want(nil, nil, nil, nil, nil, nil))
    local line = [[1.2.3.4 - - [01/Nov/2022:00:00:00 -0500] "GET /a?sid=9 HTTP/1.1" 200 1 "-" "-"]]
    T.eq(e:parse_url("/a?sid=9"), nil)
    local r = table.pack(e:process(line, "i"))
    T.eq({ r[22], r[23], r[24] }, { "/a", "sid=9", "9" }, "path, query and rest_session of the line")
    T.eq(errmsg(function() e:parse_url({}) end), "bad argument #1 to 'parse_url' (string expected, got table)")
    local m
    m = engine{ map = function() m:parse_url("/") end }
    T.eq((select(2, m:process(line, "i")):gsub("^map error: [^:]+:%d+: ", "")),
        "logfmt.parse_url: called from the mapping function")
    m:close()
    T.eq(errmsg(function() m:parse_url("/") end), "logfmt.parse_url: engine is closed")
end)

T.test("user-agent rules see the first 2048 bytes, so a huge user agent costs little", function()
    local e = engine{ ua = { browser = { { "Firefox/", "Firefox" } },
                             device = { { "Android(?!.*Mobile)", "tablet" }, { "Mobile", "mobile" } } } }
    local function ua(agent)
        local r = table.pack(e:process('1.2.3.4 - - [01/Nov/2022:00:00:00 -0500] "GET / HTTP/1.1" 200 1 "-" "'
            .. agent .. '"', "i"))
        return { r[33], r[35], #r[32] }      -- browser, device, length of user_agent
    end
    T.eq(ua("Firefox/1" .. string.rep("x", 60000)), { "Firefox", nil, 60009 })
    T.eq(ua(string.rep("x", 2041) .. "Firefox/1"), { nil, nil, 2050 }, "past the first 2048 bytes")
    T.eq(ua(string.rep("x", 2040) .. "Firefox/1"), { "Firefox", nil, 2049 }, "ends at byte 2048")
    -- Quadratic in what it sees: 9000 "Android" each scanning to the end cost 0.4 s a line.
    local evil = string.rep("Android", 9000) .. " Mobile"
    local t0 = require("lproc.sys").now()
    for i = 1, 10 do T.eq(ua(evil .. i), { nil, "tablet", #evil + #tostring(i) }) end
    T.ok(require("lproc.sys").now() - t0 < 5, "10 lines with a 63 KB user agent in under 5 s")
end)

T.test("a GeoIP database closed under a live engine: answers stay, nothing dangles", function()
    local db = assert(require("lproc.geoip").open((os.getenv("LPROC_ROOT") or ".") .. "/build/country.mmdb"))
    local e = logfmt.engine{ formats = { { name = "ip", format = "$remote_addr $status" } }, geoip = { db } }
    local function geo(line)
        local r = table.pack(e:process(line, "i"))
        return { r[10], r[11], r[12] }      -- country, country_code, city
    end
    T.eq(geo("8.8.8.8 200"), { "United States", "US", nil })
    db:close()
    T.eq(geo("8.8.8.8 200"), { "United States", "US", nil }, "the engine's cached answer")
    T.eq(geo("1.1.1.1 200"), { nil, nil, nil }, "a closed database knows nothing")
    db = assert(require("lproc.geoip").open((os.getenv("LPROC_ROOT") or ".") .. "/build/country.mmdb"))
    local m = logfmt.engine{ formats = { { name = "ip", format = "$remote_addr $status" } }, geoip = { db },
                             map = function(rec) db:close(); collectgarbage() end }
    T.eq(m:json("9.9.9.9 200", "i"):match('"country":"[^"]*","country_code":"[^"]*"'),
        '"country":"United States","country_code":"US"', "closed by the mapping function")
end)

T.test("a closed engine refuses every method; close twice is fine", function()
    local e = engine()
    e:close()
    e:close()
    T.eq(tostring(e), "logfmt.engine (closed)")
    for _, m in ipairs({ "process", "json" }) do
        T.eq(errmsg(function() e[m](e, "x", "y") end), "logfmt." .. m .. ": engine is closed")
    end
    T.eq(errmsg(function() e:columns() end), "logfmt.columns: engine is closed")
    T.eq(errmsg(function() e:stats() end), "logfmt.stats: engine is closed")
    T.eq(errmsg(function() e:bind("json") end), "logfmt.bind: engine is closed")
    T.eq(errmsg(function() engine():bind("sql") end), "bad argument #1 to 'bind' (invalid option 'sql')")
    T.eq(errmsg(function() engine():process({}, "x") end), "bad argument #1 to 'process' (string expected, got table)")
end)

T.test("the record exists only during the mapping function", function()
    local kept
    local e = engine{ map = function(rec) kept = rec end }
    T.eq((e:process([[1.2.3.4 - - [01/Nov/2022:00:00:00 -0500] "GET / HTTP/1.1" 200 1 "-" "-"]], "i")), true)
    T.eq(tostring(kept), "logfmt.record")
    T.eq(errmsg(function() return kept.status end), "rec: used outside the mapping function")
    T.eq(errmsg(function() kept.status = 1 end), "rec: used outside the mapping function")
end)

T.done()
