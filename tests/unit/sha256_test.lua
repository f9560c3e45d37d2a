-- sha256_test.lua: lproc.sha256 against known digests (FIPS 180-2 vectors and values
-- computed by coreutils' sha256sum), concatenation, numbers and argument errors.
local T = require "testing"
local sha256 = require "lproc.sha256"

-- The message of the error fn raises, without the "chunk:line: " position Lua adds.
local function errmsg(fn)
    local ok, e = pcall(fn)
    T.ok(not ok, "an error")
    return (tostring(e):gsub("^[^\n:]*:%d+: ", ""))
end

local vectors = {
    { "empty", { "" }, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
    { "abc", { "abc" }, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
    { "448 bits", { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq" },
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
    { "one million a", { string.rep("a", 1000000) },
      "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0" },
    { "1 MiB of a", { string.rep("a", 1048576) },
      "9bc1b2a288b26af7257a36277ae3816a7d4f16e89c1e7e77d0a5c48bad62b360" },
    { "one NUL", { "\0" }, "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d" },
    { "NUL inside", { "a\0b" }, "59b271ae1bbcb1d31d41929817f4b16fb439eb4f31520b5ad1d5ce98920a7138" },
    { "three NULs", { "\0\0\0" }, "709e80c88487a2411e1ee4dfb9f22a861492d20c4765150c0c794abd70f8147c" },
    { "NULs in pieces", { "\0", "", "\0\0" },
      "709e80c88487a2411e1ee4dfb9f22a861492d20c4765150c0c794abd70f8147c" },
    { "two pieces", { "a", "b" }, "fb8e20fc2e4c3f248c60c39bd652f3c1347298bb977b8b4d5903b85055620603" },
    { "empty pieces", { "", "", "" }, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
    { "integer", { 42 }, "73475cb40a568e8da8a045ced110137e159f890ac4da883b6b17dc651b3a8049" },
    { "float", { 1.5 }, "9f29a130438b81170b92a42650f9a94291ecad60bd47af2a3886e75f7f728725" },
    { "float 1.0", { 1.0 }, "d0ff5974b6aa52cf562bea5921840c032a860a91a3512f7fe8f768f6bbe005f6" },
    { "float 1e100", { 1e100 }, "33d5997bb6b66e3ae3b8e79fff5fe0954bc7b2a38a9d95d83f437d0e57b68f82" },
    { "float 2^53", { 2 ^ 53 }, "40085dd8a43135ef9a223a71368ae6110d68b21026833d5a7fbed477ae8a77fd" },
    { "minus zero", { -0.0 }, "c26617c7ccbcaa6631b45d851b8cf56e21d2ca624bdb1193afdbd4b560702cec" },
    { "mininteger", { math.mininteger },
      "85386477f3af47e4a0b308ee3b3a688df16e8b2228105dd7d4dcd42a9807cb78" },
    { "string and number", { "4", 2 }, "73475cb40a568e8da8a045ced110137e159f890ac4da883b6b17dc651b3a8049" },
}

for _, v in ipairs(vectors) do
    T.test("vector: " .. v[1], function()
        T.eq(sha256.hex(table.unpack(v[2])), v[3])
    end)
end

T.test("numbers hash like tostring", function()
    for _, n in ipairs({ 0, -1, 7, 3.25, math.pi, math.maxinteger, 1 / 0, -1 / 0, 0.1 }) do
        T.eq(sha256.hex(n), sha256.hex(tostring(n)), tostring(n))
    end
end)

T.test("the argument is not modified by the conversion", function()
    local n = 12
    T.eq(sha256.hex(n), sha256.hex("12"))
    T.eq(math.type(n), "integer")
end)

T.test("concatenation equivalence", function()
    T.eq(sha256.hex("a", "b"), sha256.hex("ab"))
    T.eq(sha256.hex("GET /", "\0", "x", 200), sha256.hex("GET /\0x200"))
    local parts, whole = {}, {}
    for i = 1, 200 do
        parts[i] = string.rep(string.char(i % 256), i)
        whole[i] = parts[i]
    end
    T.eq(sha256.hex(table.unpack(parts)), sha256.hex(table.concat(whole)))
end)

T.test("lower-case hex of 64 characters, fresh state on each call", function()
    local a = sha256.hex("x")
    T.eq(#a, 64)
    T.ok(a:match("^[0-9a-f]+$"), "lower-case hex")
    sha256.hex(string.rep("y", 100000))
    T.eq(sha256.hex("x"), a)
end)

T.test("lineid: the digest of source NUL offset NUL line", function()
    -- sha256 -n "/var/log/access.log\0""1234\0""GET / HTTP/1.1"
    local line = '1.2.3.4 - - [01/Nov/2022:00:00:00 -0500] "GET / HTTP/1.1" 200 5 "-" "-"'
    for _, off in ipairs({ 0, 7, 1234, -1, math.maxinteger, math.mininteger }) do
        T.eq(sha256.lineid("/var/log/access.log", off, line),
             sha256.hex("/var/log/access.log", "\0", tostring(off), "\0", line), "offset " .. off)
    end
    T.eq(sha256.lineid("", 0, ""), sha256.hex("\0" .. "0" .. "\0"))
    T.eq(sha256.lineid("s\0x", 5, "a\0b\255"), sha256.hex("s\0x\0" .. "5\0a\0b\255"))
    T.eq(errmsg(function() return sha256.lineid("s", 1.5, "l") end),
         "bad argument #2 to 'lineid' (integer expected, got number)")
    T.eq(errmsg(function() return sha256.lineid("s", "1", "l") end),
         "bad argument #2 to 'lineid' (integer expected, got string)")
    T.eq(errmsg(function() return sha256.lineid("s", 1) end),
         "bad argument #3 to 'lineid' (string expected, got no value)")
end)

T.test("is_hex: the form of a digest, nothing else", function()
    local d = sha256.hex("abc")
    T.eq(sha256.is_hex(d), true)
    T.eq(sha256.is_hex(sha256.lineid("s", 0, "x")), true)
    T.eq(sha256.is_hex(string.rep("0", 64)), true)
    T.eq(sha256.is_hex(d:upper()), false)
    T.eq(sha256.is_hex(d:sub(1, 63)), false)
    T.eq(sha256.is_hex(d .. "0"), false)
    T.eq(sha256.is_hex(d:sub(1, 63) .. "g"), false)
    T.eq(sha256.is_hex(d:sub(1, 63) .. "\0"), false)
    T.eq(sha256.is_hex("\0" .. d:sub(2)), false)
    T.eq(sha256.is_hex(""), false)
    T.eq(sha256.is_hex(nil), false)
    T.eq(sha256.is_hex(12), false)
    T.eq(sha256.is_hex({}), false)
    for _, c in ipairs({ "/", ":", "`", "g", "F", " " }) do
        T.eq(sha256.is_hex(d:sub(1, 10) .. c .. d:sub(12)), false, c)
    end
end)

local errors = {
    { "no argument", {}, 0, "sha256.hex: bad argument #1 (string expected, got no value)" },
    { "nil", { nil }, 1, "sha256.hex: bad argument #1 (string expected, got nil)" },
    { "boolean second", { "a", true }, 2, "sha256.hex: bad argument #2 (string expected, got boolean)" },
    { "table third", { "a", "b", {} }, 3, "sha256.hex: bad argument #3 (string expected, got table)" },
    { "function", { print }, 1, "sha256.hex: bad argument #1 (string expected, got function)" },
    { "nil in the middle", { "a", nil, "c" }, 3, "sha256.hex: bad argument #2 (string expected, got nil)" },
}

for _, e in ipairs(errors) do
    T.test("error: " .. e[1], function()
        T.eq(errmsg(function() return sha256.hex(table.unpack(e[2], 1, e[3])) end), e[4])
    end)
end

T.done()
