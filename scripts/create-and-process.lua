-- wrk script for scripts/retention-memory.sh: creates requests and processes
-- each created id (ids wait in a queue shared by the thread's connections).
local ids = {}
wrk.headers["Content-Type"] = "application/json"
local create_body = '{"to":"user@example.com","message":"hello","type":"email"}'
request = function()
  local id = table.remove(ids)
  if id then
    return wrk.format("POST", "/v1/requests/" .. id .. "/process", nil, "")
  end
  return wrk.format("POST", "/v1/requests", nil, create_body)
end
response = function(status, headers, body)
  if status == 201 then
    local id = body:match('"id":"([^"]+)"')
    if id then table.insert(ids, id) end
  end
end
