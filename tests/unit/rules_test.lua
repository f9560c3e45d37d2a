-- rules_test.lua: lproc.rules, the face of the cleaning rules: formats, columns, the mapping
-- function, custom columns, user-agent rules, GeoIP, and the schema in sql/schema.sql.
local ROOT = os.getenv("LPROC_ROOT") or "."
package.path = ROOT .. "/scripts/lib/?.lua;" .. package.path
local T = require "testing"
local rules = require "lproc.rules"
local logfmt = require "lproc.logfmt"

local SRC = debug.getinfo(1, "S").short_src
local TEST_DB = T.env("LPROC_TEST_MMDB")
local COUNTRY_DB = ROOT .. "/build/country.mmdb"

local function errmsg(fn)
    local ok, e = pcall(fn)
    T.ok(not ok, "an error")
    return tostring(e)
end

-- The line where the next statement starts (for error positions).
local function here() return debug.getinfo(2, "l").currentline end

local COMBINED_LINE = [[203.0.113.9 - alice [01/Nov/2022:00:00:00 -0500] "GET /shop/cart?sid=abc&x=1 HTTP/1.1" 200 512 "https://ref.example/" "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"]]
local PROXY_LINE = [[198.51.100.4 Z9Y8X7W6V5U4T3S bob@Example.org [01/Nov/2022:10:00:00 +0100] "GET https://shop.example:443/p HTTP/1.1" 302 7259 -]]

-- Column name -> value of R:process(line, id), or the reject reason.
local function row(R, line, id)
    local r = table.pack(R:process(line, id or "id"))
    if not r[1] then return r[2] end
    local t = {}
    for i, c in ipairs(R:columns()) do t[c.name] = r[i + 1] end
    return t
end

local function new(extra)
    local R = rules.new(extra)
    R:format "combined"
    R:format "proxy"
    return R
end

T.test("presets: combined, common and proxy", function()
    T.eq(rules.presets.proxy,
        [[$remote_addr $proxy_session $remote_user [$time_local] "$request" $status $body_bytes_sent -]])
    local R = rules.new()
    R:format "common"
    R:compile()
    local r = row(R, [[1.2.3.4 - - [01/Nov/2022:00:00:00 +0000] "HEAD / HTTP/1.0" 200 -]])
    T.eq({ r.rest_method, r.size_bytes, r.user_agent }, { "HEAD", 0, nil })
end)

T.test("declaration errors point at the declaration", function()
    local R = rules.new()
    local line = here() + 1
    T.eq(errmsg(function() R:format "nginx" end),
        SRC .. ":" .. line .. ": rules: unknown preset 'nginx' (combined, common, proxy)")
    line = here() + 1
    T.eq(errmsg(function() R:format("mine", "$remote_addr ${oops") end),
        SRC .. ":" .. line .. ": rules: format 'mine': unterminated '${' at byte 14")
    R:format "combined"
    T.eq(errmsg(function() R:format "combined" end):match("rules: .*"), "rules: format 'combined' declared twice")
    T.eq(errmsg(function() R:column("status", "INT") end):match("rules: .*"),
        "rules: column 'status' is a standard column")
    R:column("extra", "INT")
    T.eq(errmsg(function() R:column("extra", "INT") end):match("rules: .*"), "rules: column 'extra' declared twice")
    T.eq(errmsg(function() rules.new():compile() end):match("rules: .*"),
        "rules: no format declared (e.g. R:format \"combined\")")
    local B = new()
    B:column("weird", "POINT")
    T.eq(errmsg(function() B:compile() end):match("rules: .*"), "rules: column 'weird': unsupported SQL type 'POINT'")
    T.eq(errmsg(function() new():process("x", "y") end):match("rules: .*"), "rules: R:process before R:compile()")
    T.eq(errmsg(function() new():json("x", "y") end):match("rules: .*"), "rules: R:json before R:compile()")
    local G = new{ geoip = { "/nonexistent.mmdb" } }
    T.eq(errmsg(function() G:compile() end):match("rules: .*"),
        "rules: geoip.open: /nonexistent.mmdb: No such file or directory")
end)

T.test("columns: id first, custom last, and the same as sql/schema.sql", function()
    local R = new()
    R:column("cache_status", "VARCHAR(16)", { index = true })
    local cols = R:columns()
    T.eq(cols[1], { name = "id", type = "CHAR(64)", null = false, custom = false, index = false })
    T.eq(cols[#cols], { name = "cache_status", type = "VARCHAR(16)", null = true, custom = true, index = true })
    local f = assert(io.open(ROOT .. "/sql/schema.sql"))
    local sql = f:read("a")
    f:close()
    local body = sql:match("CREATE TABLE IF NOT EXISTS clean_log (%b())")
    local want, keys = {}, {}
    for l in body:gmatch("[^\n]+") do
        local name, ty = l:match("^    `([%w_]+)` (.+),$")
        -- the id's character set and NOT NULL come from the DDL (clean.lua), not the rules
        if name then want[#want + 1] = name .. " " .. ty:gsub(" CHARACTER SET ascii COLLATE ascii_bin NOT NULL$", "") end
    end
    -- an index's first column (the others: timestamp)
    for name in body:gmatch("KEY clean_log_[%w_]+ %(`([%w_]+)`[^)]*%)") do keys[#keys + 1] = name end
    local got, gotkeys = {}, {}
    for _, c in ipairs(cols) do
        if not c.custom then
            got[#got + 1] = c.name .. " " .. c.type
            if c.index then gotkeys[#gotkeys + 1] = c.name end
        end
    end
    T.eq(got, want)
    T.eq(#got, 36)
    table.sort(keys)
    table.sort(gotkeys)
    T.eq(gotkeys, keys)
    R:compile()
    T.eq(#R:columns(), 37)
end)

T.test("combined and proxy lines mixed, through one rules object", function()
    local R = new():compile()
    local a = row(R, COMBINED_LINE)
    T.eq({ a.user, a.is_email, a.path, a.query, a.rest_session, a.referrer, a.browser, a.os, a.device, a.session },
        { "alice", false, "/shop/cart", "sid=abc&x=1", "abc", "https://ref.example/", "Safari", "iOS", "mobile", nil })
    local b = row(R, PROXY_LINE)
    T.eq({ b.timestamp, b.session, b.user, b.is_email, b.email_domain, b.schema, b.host, b.port, b.path,
        b.status_verbose, b.user_agent, b.device },
        { "2022-11-01 09:00:00", "Z9Y8X7W6V5U4T3S", "bob@Example.org", true, "example.org", "https", "shop.example",
            443, "/p", "Found", nil, nil })
    T.eq(row(R, "not a log line"), "no format matches")
end)

T.test("the mapping function reads columns and variables, writes columns, rejects", function()
    local R = rules.new()
    R:format("site", [[$remote_addr [$time_local] "$request" $status $body_bytes_sent $upstream_cache_status $request_time]])
    R:column("cache_status", "VARCHAR(4)")
    R:column("slow", "BOOLEAN")
    R:column("tenant_id", "INT UNSIGNED")
    local seen
    function R.map(rec)
        seen = { rec._format, rec.status, rec.request_time, rec.upstream_cache_status, rec.size_kilo_bytes, rec._line }
        if rec.path == "/health" then return false, "health check" end
        if rec.path == "/drop" then return false end
        rec.cache_status = rec.upstream_cache_status
        rec.slow = rec.request_time ~= nil and rec.request_time > 1
        rec.tenant_id = tonumber(rec.path:match("^/t/(%d+)"))
        rec.status_verbose = rec.status_verbose and rec.status_verbose:upper()
        rec.is_email = true
        rec.url = nil
    end
    R:compile()
    local line = [[1.2.3.4 [01/Nov/2022:00:00:00 +0000] "GET /t/42 HTTP/1.1" 404 2048 MISSING 1.5]]
    local r = row(R, line)
    T.eq(seen, { "site", 404, 1.5, "MISSING", 2.0, line })
    T.eq({ r.cache_status, r.slow, r.tenant_id, r.status_verbose, r.is_email, r.url, r.path },
        { "MISS", true, 42, "NOT FOUND", true, nil, "/t/42" })
    r = row(R, [[1.2.3.4 [01/Nov/2022:00:00:00 +0000] "GET /x HTTP/1.1" 200 - - -]])
    T.eq({ r.cache_status, r.slow, r.tenant_id, r.request_time }, { nil, false, nil, nil })
    T.eq(row(R, [[1.2.3.4 [01/Nov/2022:00:00:00 +0000] "GET /health HTTP/1.1" 200 - - -]]), "health check")
    T.eq(row(R, [[1.2.3.4 [01/Nov/2022:00:00:00 +0000] "GET /drop HTTP/1.1" 200 - - -]]), "rejected by map")
    T.eq(R:json([[1.2.3.4 [01/Nov/2022:00:00:00 +0000] "GET /health HTTP/1.1" 200 - - -]], "k"),
        [[{"_table":"clean_log_reject","id":"k","reason":"health check","line":"1.2.3.4 [01/Nov/2022:00:00:00 +0000] \"GET /health HTTP/1.1\" 200 - - -"}]])
end)

T.test("an error in the mapping function is a reject with script:line; the run goes on", function()
    local R = new()
    local boom = here() + 2
    function R.map(rec)
        if rec.status == 500 then error("boom") end
        if rec.status == 404 then rec.status = 70000 end
        if rec.status == 403 then rec.nope = 1 end
        if rec.status == 401 then return rec.missing end
        if rec.status == 400 then error({}) end
        if rec.status == 302 then rec.id = "x" end
        if rec.status == 301 then rec.is_email = nil end
        if rec.status == 304 then rec.timestamp = "yesterday" end
        if rec.status == 206 then R:process("x", "y") end
    end
    R:compile()
    local function reason(status)
        return row(R, (COMBINED_LINE:gsub(" 200 ", " " .. status .. " ")))
    end
    local at = SRC .. ":"
    T.eq(reason(500), "map error: " .. at .. boom .. ": boom")
    T.eq(reason(404), "map error: " .. at .. (boom + 1) .. ": rec.status: out of range (SMALLINT UNSIGNED number)")
    T.eq(reason(403), "map error: " .. at .. (boom + 2) .. ": rec.nope: no such column or variable")
    T.eq(reason(401), "map error: " .. at .. (boom + 3) .. ": rec.missing: no such column or variable")
    T.eq(reason(400), "map error: (error object is a table value)")
    T.eq(reason(302), "map error: " .. at .. (boom + 5) .. ": rec.id: read-only")
    T.eq(reason(301), "map error: " .. at .. (boom + 6) .. ": rec.is_email: cannot be nil")
    T.eq(reason(304), "map error: " .. at .. (boom + 7)
        .. ": rec.timestamp: not a 'YYYY-MM-DD HH:MM:SS' text (DATETIME string)")
    T.eq(reason(206), "map error: " .. at .. (boom + 8) .. ": logfmt.process: called from the mapping function")
    T.eq(row(R, COMBINED_LINE).status, 200, "the next line is fine")
    T.eq(R:stats().map_errors, 9)
end)

T.test("a custom column named like a variable is filled from it, converted to its type", function()
    local R = rules.new()
    R:format("f", "$status $upstream_status $upstream_addr $gzip_ratio")
    R:column("upstream_status", "SMALLINT")
    R:column("upstream_addr", "VARCHAR(6)")
    R:column("gzip_ratio", "DECIMAL(4,2)")
    R:compile()
    local r = row(R, "200 502 10.0.0.1:8080 2.345")
    T.eq({ r.upstream_status, r.upstream_addr, r.gzip_ratio }, { 502, "10.0.0", "2.35" })
    r = row(R, "200 - - -")
    T.eq({ r.upstream_status, r.upstream_addr, r.gzip_ratio }, { nil, nil, nil })
    T.eq(row(R, "200 50x - -"), "column upstream_status: $upstream_status not an integer")
    local D = rules.new()
    D:format("d", "$status $seen_at $seen_day $seen_time")
    D:column("seen_at", "DATETIME")
    D:column("seen_day", "DATE")
    D:column("seen_time", "TIME")
    D:compile()
    r = row(D, "200 2024-02-29_10:00:00 2024-02-29 23:59:59")
    T.eq(r, "column seen_at: $seen_at not a 'YYYY-MM-DD HH:MM:SS' text")
    T.eq(row(D, "200 - 2023-02-29 -"), "column seen_day: $seen_day impossible date")
    T.eq(row(D, "200 - - 24:00:00"), "column seen_time: $seen_time impossible time")
    function D.map(rec) rec.seen_at = "2024-02-29 23:59:59" end
    D:compile()
    r = row(D, "200 - 2024-02-29 00:00:00")
    T.eq({ r.seen_at, r.seen_day, r.seen_time }, { "2024-02-29 23:59:59", "2024-02-29", "00:00:00" })
    T.eq(row(R, "200 99999 - -"), "column upstream_status: $upstream_status out of range")
end)

T.test("user-agent rules: per-object copies, extended by ops, first match wins", function()
    local ua = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/112.0 Safari/537.36 MyApp/3.1"
    local line = COMBINED_LINE:gsub('"Mozilla.*"$', '"' .. ua .. '"')
    local R = new():compile()
    local r = row(R, line)
    T.eq({ r.browser, r.os, r.device }, { "Chrome", "Android", "tablet" })
    local M = new()
    table.insert(M.user_agents.browser, 1, { "MyApp/", "MyApp" })
    table.insert(M.user_agents.device, 1, { "(?i)myapp/\\d", "app" })
    M.user_agents.default_device = "unknown"
    M:compile()
    r = row(M, line)
    T.eq({ r.browser, r.os, r.device }, { "MyApp", "Android", "app" })
    r = row(M, (COMBINED_LINE:gsub('"Mozilla.*"$', '"Lynx/2.8.9"')))
    T.eq({ r.browser, r.os, r.device }, { nil, nil, "unknown" })
    T.eq(rules.user_agents.browser[1], { "Googlebot", "Googlebot" }, "the defaults are untouched")
    local bots = {
        ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"] = { "Googlebot", nil, "bot" },
        ["curl/8.4.0"] = { "curl", nil, "bot" },
        ["Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Safari/537.36 Edg/118.0.2088.76"] = { "Edge", "Windows", "desktop" },
        ["Mozilla/5.0 (X11; Linux x86_64; rv:109.0) Gecko/20100101 Firefox/118.0"] = { "Firefox", "Linux", "desktop" },
        ["Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"] = { "Safari", "iOS", "tablet" },
    }
    for s, want in pairs(bots) do
        r = row(R, (COMBINED_LINE:gsub('"Mozilla.*"$', '"' .. s .. '"')))
        T.eq({ r.browser, r.os, r.device }, want, s)
    end
    local st = R:stats()
    row(R, line)
    T.eq(R:stats().ua_cache_hits, st.ua_cache_hits + 1, "the user-agent cache answers a repeated agent")
end)

T.test("GeoIP: databases in order, the first answer wins per field", function()
    local R = new{ geoip = { TEST_DB } }:compile()
    local function geo(ip)
        local r = row(R, (COMBINED_LINE:gsub("^[^ ]+", ip)))
        return { r.country_code, r.country, r.city }
    end
    T.eq(geo("1.2.3.4"), { "FR", "France", "Paris" })
    T.eq(geo("5.6.7.8"), { "DE", "Germany", nil })
    T.eq(geo("2001:db8:1::5"), { "JP", "Japan", "Tokyo" })
    T.eq(geo("31.0.0.1"), { "CI", "Côte d'Ivoire", "Abidjan" })
    T.eq(geo("11.0.0.1"), { nil, nil, "Nul\u{FFFD}City" })
    T.eq(geo("10.1.2.3"), { nil, nil, nil })
    T.eq(geo("1.2.3.4"), { "FR", "France", "Paris" })
    T.eq(R:stats().geo_cache_hits, 1)
    local f = io.open(COUNTRY_DB)
    if f then
        f:close()
        R = new{ geoip = { COUNTRY_DB, TEST_DB } }:compile()
        T.eq(geo("1.2.3.4"), { "AU", "Australia", "Paris" })
        T.eq(geo("11.0.0.1"), { "US", "United States", "Nul\u{FFFD}City" })
        T.eq(geo("8.8.8.8"), { "US", "United States", nil })
    end
end)

T.test("max_line: a longer line is a reject, not parsed", function()
    local R = new{ max_line = 100 }:compile()
    T.eq(row(R, PROXY_LINE), "line too long (126 bytes, max 100)")
    T.eq(errmsg(function() new{ max_line = 2^40 }:compile() end):match("rules: .*"),
        "rules: max_line must be an integer from 1 to 16777216")
end)

T.test("scripts/clean.lua: combined and proxy mixed, and it compiles", function()
    local real = package.loaded["lproc.clean"]
    package.loaded["lproc.clean"] = { main = function(R) return R end }
    local R = dofile(ROOT .. "/scripts/clean.lua")
    package.loaded["lproc.clean"] = real
    R.geoip = { TEST_DB }
    R:compile()
    T.eq(row(R, COMBINED_LINE).path, "/shop/cart")
    T.eq(row(R, PROXY_LINE).session, "Z9Y8X7W6V5U4T3S")
    T.eq(row(R, "junk"), "no format matches")
end)

T.done()
