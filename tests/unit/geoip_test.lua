-- geoip_test.lua: lproc.geoip against the database tests/mkmmdb.pl writes (its networks
-- are listed at the top of that file) and, when built, the country database of `make`.
local T = require "testing"
local geoip = require "lproc.geoip"

local TEST_DB = T.env("LPROC_TEST_MMDB")
local TMP = T.env("LPROC_TEST_TMP")
local ROOT = os.getenv("LPROC_ROOT") or "."
local COUNTRY_DB = ROOT .. "/build/country.mmdb"

-- The message of the error fn raises, without the "chunk:line: " position Lua adds.
local function errmsg(fn)
    local ok, e = pcall(fn)
    T.ok(not ok, "an error")
    return (tostring(e):gsub("^[^\n:]*:%d+: ", ""))
end

-- All the results of db:lookup(ip), packed with their count.
local function look(db, ip)
    return table.pack(db:lookup(ip))
end

local function answer(cc, name, city)
    return { n = 3, cc, name, city }
end
local NONE = { n = 1 }
local PARIS = answer("FR", "France", "Paris")
local GERMANY = answer("DE", "Germany", nil)
local TOKYO = answer("JP", "Japan", "Tokyo")

local lookups = {
    -- IPv4
    { "1.2.3.4", PARIS },
    { "1.2.3.0", PARIS },
    { "1.2.3.255", PARIS },
    { "1.2.2.255", NONE },
    { "1.2.4.0", NONE },
    { "5.6.7.8", GERMANY },
    { "5.6.255.255", GERMANY },
    { "5.7.0.0", NONE },
    { "7.7.7.7", answer("US", "United States", nil) },       -- registered_country only
    { "9.9.9.9", answer("ZZ", nil, nil) },                    -- country without names
    { "11.2.3.4", answer(nil, nil, "Nul\0City") },            -- city only, NUL in the name
    { "31.0.200.1", answer("CI", "C\xc3\xb4te d'Ivoire", "Abidjan") },
    -- IPv6
    { "2001:db8:1::1", TOKYO },
    { "2001:db8:1:ffff:ffff:ffff:ffff:ffff", TOKYO },
    { "2001:0db8:0001:0000:0000:0000:0000:0001", TOKYO },
    { "2001:DB8:1::AB", TOKYO },
    { "2001:db8:2::", NONE },
    { "2a00:1450:4001:82a::200e", answer("GB", "United Kingdom", "London") },
    -- IPv4 in IPv6: mapped and 6to4 reach the IPv4 data
    { "::ffff:1.2.3.4", PARIS },
    { "::ffff:102:304", PARIS },
    { "::ffff:5.6.0.1", GERMANY },
    { "2002:102:304::1", PARIS },
    -- private, loopback, reserved: unknown
    { "10.1.2.3", NONE },
    { "192.168.1.1", NONE },
    { "172.16.0.1", NONE },
    { "127.0.0.1", NONE },
    { "0.0.0.0", NONE },
    { "255.255.255.255", NONE },
    { "::1", NONE },
    { "::", NONE },
    { "fe80::1", NONE },
    -- not IP addresses
    { "not-an-ip", NONE },
    { "", NONE },
    { "999.1.1.1", NONE },
    { "1.2.3.4\0", NONE },
    { "1.2.3\0.4", NONE },
    { "\0", NONE },
    { "1.2.3", NONE },
    { "1.2.3.4.5", NONE },
    { " 1.2.3.4", NONE },
    { "1.2.3.4 ", NONE },
    { "01.2.3.4", NONE },
    { "1.2.3.4/24", NONE },
    { "fe80::1%eth0", NONE },
    { "2001:db8:1::1::1", NONE },
    { "::ffff:1.2.3.4.5", NONE },
    { string.rep("1", 46), NONE },
    { string.rep("2001:db8:1::1", 10), NONE },
}

T.test("lookups in the test database", function()
    local db = assert(geoip.open(TEST_DB))
    for _, l in ipairs(lookups) do
        T.eq(look(db, l[1]), l[2], l[1])
    end
    db:close()
end)

T.test("the same answers a second time (from the cache), in reverse order", function()
    local db = assert(geoip.open(TEST_DB))
    for _, l in ipairs(lookups) do look(db, l[1]) end
    for i = #lookups, 1, -1 do
        T.eq(look(db, lookups[i][1]), lookups[i][2], lookups[i][1])
    end
    db:close()
end)

-- The answer the test database gives for a.b.c.d, from the network list.
local function expected(a, b, c)
    if a == 1 and b == 2 and c == 3 then return PARIS end
    if a == 5 and b == 6 then return GERMANY end
    return NONE
end

T.test("many more distinct addresses than the cache holds, twice", function()
    local db = assert(geoip.open(TEST_DB))
    local ips, want = {}, {}
    for _, net in ipairs({ { 5, 6 }, { 1, 2 }, { 5, 7 } }) do
        for c = 0, 40 do
            for d = 0, 255, 3 do
                ips[#ips + 1] = string.format("%d.%d.%d.%d", net[1], net[2], c, d)
                want[#want + 1] = expected(net[1], net[2], c)
            end
        end
    end
    T.ok(#ips > 10000, "more than 10000 addresses")
    for round = 1, 2 do
        local bad = 0
        for i = 1, #ips do
            if not T.deq(look(db, ips[i]), want[i]) then bad = bad + 1 end
        end
        T.eq(bad, 0, "wrong answers in round " .. round)
    end
    -- interleaving hot and cold addresses keeps the hot answers right
    for i = 1, #ips, 7 do
        T.eq(look(db, "1.2.3.4"), PARIS)
        T.eq(look(db, ips[i]), want[i], ips[i])
        T.eq(look(db, "2001:db8:1::1"), TOKYO)
    end
    db:close()
end)

T.test("answers are copies: they survive close and reopen", function()
    local db = assert(geoip.open(TEST_DB))
    local cc, name, city = db:lookup("31.0.0.1")
    db:close()
    collectgarbage()
    T.eq({ cc, name, city }, { "CI", "C\xc3\xb4te d'Ivoire", "Abidjan" })
end)

T.test("metadata", function()
    local db = assert(geoip.open(TEST_DB))
    local m = db:metadata()
    T.ok(math.type(m.node_count) == "integer" and m.node_count > 0, "node_count")
    m.node_count = nil
    T.eq(m, {
        database_type = "lproc-test",
        build_epoch = 1700000000,
        ip_version = 6,
        record_size = 24,
        languages = { "en" },
        description = "lproc test database",
    })
    db:close()
end)

T.test("two databases open at once, closed independently", function()
    local a = assert(geoip.open(TEST_DB))
    local b = assert(geoip.open(TEST_DB))
    T.eq(look(a, "1.2.3.4"), PARIS)
    T.eq(look(b, "1.2.3.4"), PARIS)
    a:close()
    T.eq(look(b, "1.2.3.4"), PARIS)
    T.eq(look(b, "2001:db8:1::1"), TOKYO)
    T.eq(errmsg(function() return a:lookup("1.2.3.4") end), "geoip.lookup: db is closed")
    b:close()
end)

T.test("open errors", function()
    local missing = TMP .. "/no-such.mmdb"
    T.eq({ geoip.open(missing) }, { nil, "geoip.open: " .. missing .. ": No such file or directory" })
    local text = TMP .. "/not-an.mmdb"
    local f = assert(io.open(text, "wb"))
    f:write(string.rep("this is not a MaxMind DB file\n", 100))
    f:close()
    T.eq({ geoip.open(text) },
        { nil, "geoip.open: " .. text .. ": The MaxMind DB file contains invalid metadata" })
    local empty = TMP .. "/empty.mmdb"
    f = assert(io.open(empty, "wb"))
    f:close()
    local db, e = geoip.open(empty)
    T.eq(db, nil)
    T.ok(e:find("geoip.open: " .. empty .. ": ", 1, true) == 1, "empty file: " .. tostring(e))
end)

T.test("argument errors", function()
    T.eq(errmsg(function() return geoip.open() end),
        "geoip.open: bad argument #1 (string expected, got no value)")
    T.eq(errmsg(function() return geoip.open(42) end),
        "geoip.open: bad argument #1 (string expected, got number)")
    T.eq(errmsg(function() return geoip.open("a\0b") end),
        "geoip.open: bad argument #1 (path contains a NUL byte)")
    local db = assert(geoip.open(TEST_DB))
    T.eq(errmsg(function() return db:lookup() end),
        "geoip.lookup: bad argument #1 (string expected, got no value)")
    T.eq(errmsg(function() return db:lookup(16909060) end),
        "geoip.lookup: bad argument #1 (string expected, got number)")
    T.eq(errmsg(function() return db.lookup("1.2.3.4") end),
        "geoip.lookup: bad self (lproc.geoip.db expected, got string)")
    T.eq(errmsg(function() return db.metadata({}) end),
        "geoip.metadata: bad self (lproc.geoip.db expected, got table)")
    T.eq(errmsg(function() return db.close(nil) end),
        "geoip.close: bad self (lproc.geoip.db expected, got nil)")
    db:close()
end)

T.test("close, closed handle, tostring, <close>, gc", function()
    local db = assert(geoip.open(TEST_DB))
    T.eq(tostring(db), "geoip.db (" .. TEST_DB .. ")")
    T.eq(db:close(), true)
    T.eq(db:close(), true)
    T.eq(tostring(db), "geoip.db (closed)")
    T.eq(errmsg(function() return db:lookup("1.2.3.4") end), "geoip.lookup: db is closed")
    T.eq(errmsg(function() return db:metadata() end), "geoip.metadata: db is closed")
    local outer
    do
        local d <close> = assert(geoip.open(TEST_DB))
        outer = d
        T.eq(look(d, "5.6.7.8"), GERMANY)
    end
    T.eq(tostring(outer), "geoip.db (closed)")
    for _ = 1, 50 do geoip.open(TEST_DB) end   -- left to the collector
    collectgarbage()
    collectgarbage()
end)

-- The built-in country database (geoip/build-country.pl, run by `make`).
local cf = io.open(COUNTRY_DB, "rb")
if cf then
    cf:close()
    T.test("country database: metadata", function()
        local db = assert(geoip.open(COUNTRY_DB))
        local m = db:metadata()
        T.eq({ m.database_type, m.ip_version, m.record_size, m.languages, m.description },
            { "lproc-country", 6, 24, { "en" },
              "IPFire Location database via Debian tor-geoipdb, CC BY-SA 4.0" })
        db:close()
    end)

    -- Addresses whose country has long been stable in the IPFire data.
    local known = {
        { "8.8.8.8", answer("US", "United States", nil) },
        { "193.0.6.139", answer("NL", "Netherlands", nil) },          -- RIPE NCC
        { "77.88.8.8", answer("RU", "Russian Federation", nil) },
        { "133.1.1.1", answer("JP", "Japan", nil) },
        { "200.160.2.3", answer("BR", "Brazil", nil) },
        { "::ffff:8.8.8.8", answer("US", "United States", nil) },
        { "2001:4860:4860::8888", answer("US", "United States", nil) },
        { "2a02:6b8::2:242", answer("RU", "Russian Federation", nil) },
        { "2a01:4f8::1", answer("DE", "Germany", nil) },
        { "10.0.0.1", NONE },
        { "172.16.5.4", NONE },
        { "192.168.1.1", NONE },
        { "127.0.0.1", NONE },
        { "0.0.0.0", NONE },
        { "::1", NONE },
        { "fe80::1", NONE },
        { "not-an-ip", NONE },
    }
    T.test("country database: well-known addresses", function()
        local db = assert(geoip.open(COUNTRY_DB))
        for _, l in ipairs(known) do
            T.eq(look(db, l[1]), l[2], l[1])
        end
        db:close()
    end)

    -- The country code the database must give for a code of the source data.
    local SKIPPED = { ["??"] = true, AP = true, AN = true, CS = true, SU = true,
                      AB = true, OS = true, UN = true, ZZ = true }
    local function want_cc(cc)
        if SKIPPED[cc] then return nil end
        return cc == "UK" and "GB" or cc
    end
    local function ipv4(n)
        return string.format("%d.%d.%d.%d", n >> 24 & 255, n >> 16 & 255, n >> 8 & 255, n & 255)
    end

    T.test("country database: sampled ranges of the source data, at both ends", function()
        local db = assert(geoip.open(COUNTRY_DB))
        local f = assert(io.open("/usr/share/tor/geoip"))
        local checked, bad, prev, i = 0, {}, nil, 0
        for line in f:lines() do
            local lo, hi, cc = line:match("^(%d+),(%d+),(%S+)$")
            if lo then
                lo, hi, i = tonumber(lo), tonumber(hi), i + 1
                if i % 211 == 0 then
                    local want = want_cc(cc)
                    for _, ip in ipairs({ lo, hi, (lo + hi) // 2 }) do
                        if db:lookup(ipv4(ip)) ~= want then bad[#bad + 1] = ipv4(ip) end
                    end
                    -- the address before lo belongs to the previous range, or to none
                    local before = prev and prev[2] == lo - 1 and want_cc(prev[3]) or nil
                    if db:lookup(ipv4(lo - 1)) ~= before then bad[#bad + 1] = ipv4(lo - 1) end
                    checked = checked + 1
                end
                prev = { lo, hi, cc }
            end
        end
        f:close()
        f = assert(io.open("/usr/share/tor/geoip6"))
        i = 0
        for line in f:lines() do
            local lo, hi, cc = line:match("^([%x:]+),([%x:]+),(%S+)$")
            if lo and not lo:find("^2002:") then
                i = i + 1
                if i % 211 == 0 then
                    for _, ip in ipairs({ lo, hi }) do
                        if db:lookup(ip) ~= want_cc(cc) then bad[#bad + 1] = ip end
                    end
                    checked = checked + 1
                end
            end
        end
        f:close()
        T.ok(checked > 3000, "ranges checked: " .. checked)
        T.eq(bad, {}, "addresses with a wrong country")
        db:close()
    end)
end

T.done()
