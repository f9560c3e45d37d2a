-- Extra rules for site.log: a site format with $time_iso8601, the request in parts,
-- $request_time, $host and a custom field, next to the default combined and proxy formats.
return function(R)
    R:format("site", [[$remote_addr - $remote_user [$time_iso8601] "$request_method $request_uri $server_protocol" ]]
        .. [[$status $bytes_sent $request_time "$http_referer" "$http_user_agent" $host $upstream_cache_status]])
    R:column("cache_status", "VARCHAR(16)")
    function R.map(rec)
        if rec.user == "crash" then error("crash requested") end
        if rec.path == "/healthz" then return false, "health check" end
        rec.cache_status = rec.upstream_cache_status and rec.upstream_cache_status:lower()
    end
end
