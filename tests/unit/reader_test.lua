-- lproc.reader: line splitting, offsets, CR handling, gzip, follow-style partial lines.
local T = require "testing"
local reader = require "lproc.reader"

local tmp = T.env("LPROC_TEST_TMP")
local n = 0
local function file(content)
    n = n + 1
    local path = tmp .. "/reader" .. n .. ".log"
    local f = assert(io.open(path, "wb"))
    f:write(content)
    f:close()
    return path
end

local function all(path, opts)
    local r = assert(reader.open(path, opts))
    local out = {}
    for line, off in r:lines() do out[#out + 1] = { line, off } end
    r:close()
    return out
end

T.test("splits lines and gives byte offsets", function()
    local cases = {
        { "", {} },
        { "a\n", { { "a", 0 } } },
        { "a\nbc\n", { { "a", 0 }, { "bc", 2 } } },
        { "a\nbc", { { "a", 0 }, { "bc", 2 } } },                 -- no final newline
        { "\n\n", { { "", 0 }, { "", 1 } } },                     -- empty lines
        { "a\r\nb\r\n", { { "a", 0 }, { "b", 3 } } },             -- CRLF
        { "a\rb\n", { { "a\rb", 0 } } },                          -- CR alone is a byte
        { "a\r\r\n", { { "a\r", 0 } } },                          -- only one CR dropped
        { "x\0y\n\255\254\n", { { "x\0y", 0 }, { "\255\254", 4 } } },
    }
    for _, c in ipairs(cases) do
        T.eq(all(file(c[1])), c[2], string.format("%q", c[1]))
    end
end)

T.test("long lines across buffer boundaries", function()
    local big = string.rep("x", 3 * 1024 * 1024 + 17)
    local got = all(file("a\n" .. big .. "\nb\n"))
    T.eq(#got, 3)
    T.eq(#got[2][1], #big)
    T.eq(got[2][1] == big, true, "bytes intact")
    T.eq(got[3], { "b", 2 + #big + 1 })
end)

T.test("over-long lines are truncated to max_line and flagged", function()
    local r = assert(reader.open(file("abcdefghij\nxy\n"), { max_line = 4 }))
    local l, off, trunc = r:read(true)
    T.eq({ l, off, trunc }, { "abcd", 0, true })
    T.eq({ r:read(true) }, { "xy", 11 })
    T.eq(r:read(true), nil)
end)

T.test("the rest of a very long line is dropped a step at a time: read says false meanwhile", function()
    local long = string.rep("z", 40 * 1024 * 1024)
    local path = file("abcd" .. long .. "\nnext\n")
    local r = assert(reader.open(path, { max_line = 4 }))
    T.eq({ r:read(true) }, { "abcd", 0, true })
    local falses, got = 0, { r:read(true) }
    while got[1] == false do falses, got = falses + 1, { r:read(true) } end
    T.ok(falses >= 1, "read gave false while dropping (" .. falses .. " times)")
    T.eq(got, { "next", 4 + #long + 1 })
    T.eq(r:read(true), nil)
    r:close()
    T.eq(all(path, { max_line = 4 }), { { "abcd", 0 }, { "next", 4 + #long + 1 } }, "lines() reads through")
end)

T.test("partial last line is held back unless asked for", function()
    local path = file("one\ntw")
    local r = assert(reader.open(path))
    T.eq({ r:read() }, { "one", 0 })
    T.eq(r:read(), nil)
    T.eq(r:tell(), 4)
    local f = assert(io.open(path, "ab")); f:write("o\nthree"); f:close()
    T.eq({ r:read() }, { "two", 4 })
    T.eq(r:read(), nil)
    T.eq({ r:read(true) }, { "three", 8 })
    T.eq(r:tell(), 13)
    r:close()
end)

T.test("seek and stat", function()
    local path = file("aa\nbb\ncc\n")
    local r = assert(reader.open(path))
    T.eq(r:seek(3), true)
    T.eq({ r:read() }, { "bb", 3 })
    local st = r:stat()
    T.eq(st.size, 9)
    T.ok(st.ino > 0)
    r:close()
end)

T.test("gzip is read transparently", function()
    local plain = tmp .. "/gz.log"
    local f = assert(io.open(plain, "wb")); f:write("g1\r\ng2\n\0\n"); f:close()
    assert(os.execute("gzip -kf " .. plain))
    local r = assert(reader.open(plain .. ".gz"))
    T.eq(r:compressed(), true)
    local got = {}
    for l, o in r:lines() do got[#got + 1] = { l, o } end
    T.eq(got, { { "g1", 0 }, { "g2", 4 }, { "\0", 7 } })
    T.err(function() r:seek(0) end, "reader.seek: " .. plain .. ".gz is not a plain file")
end)

T.test("errors", function()
    local r, err, code = reader.open(tmp .. "/missing.log")
    T.eq({ r, err, code }, { nil, "reader.open: " .. tmp .. "/missing.log: No such file or directory", 2 })
    local h = assert(reader.open(file("x\n")))
    h:close()
    T.eq(h:close(), true, "close twice")
    T.err(function() h:read() end, "reader.read: reader is closed")
    T.ok(tostring(h):find("closed"))
end)

local function records(body)
    local out, last = {}, 1
    for nxt, off, line in reader.records(body) do
        out[#out + 1] = { off, line }
        last = nxt
    end
    return out, last
end

T.test("records: batch bodies, OFFSET SP LINE LF", function()
    local function whole(body, want)   -- every record taken: next is past the end
        T.eq({ records(body) }, { want, #body + 1 }, body)
    end
    whole("0 first\n12 second\n", { { 0, "first" }, { 12, "second" } })
    whole("0 first\n12 last without LF", { { 0, "first" }, { 12, "last without LF" } })
    whole("5 \n6  two spaces\n", { { 5, "" }, { 6, " two spaces" } })
    whole("7 any \0\r\255 bytes\n", { { 7, "any \0\r\255 bytes" } })
    whole("", {})
    whole("123456789012345678 max\n", { { 123456789012345678, "max" } })
end)

T.test("records: stop at the first malformed record, and say where it starts", function()
    for _, c in ipairs({
        { "1 a\nx.5 not an offset\n20 after", 5 },
        { "1 a\n-5 negative\n", 5 },
        { "1 a\n0x10 hex\n", 5 },
        { "1 a\n+5 sign\n", 5 },
        { "1 a\n 5 leading space\n", 5 },
        { "1 a\n1234567890123456789 too long\n", 5 },
        { "1 a\n12\n13 no space before LF\n", 5 },
        { "1 a\n12", 5 },
        { "1 a\n\n2 empty record\n", 5 },
    }) do
        local got, last = records(c[1])
        T.eq({ got, last }, { { { 1, "a" } }, c[2] }, c[1])
    end
    T.eq({ records("no offset at all") }, { {}, 1 })
    T.err(function() reader.records(nil) end, "bad argument #1 to 'records' (string expected, got nil)")
end)

T.done()
