local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then return {'gone'} end
local letter = {}
local raw = found[1][2]
for i = 1, #raw, 2 do letter[raw[i]] = raw[i + 1] end
if letter['stream'] ~= KEYS[2] then return {'moved'} end
local service = letter['service']
if not service or service == '' then return {'malformed', 'it names no service'} end
local ok, entry = pcall(cjson.decode, letter['entry'] or '')
if not ok or type(entry) ~= 'table' then
  return {'malformed', 'its entry is not a JSON object'}
end
local names = {}
for name, value in pairs(entry) do
  if type(name) ~= 'string' or type(value) ~= 'string' then
    return {'malformed', 'its entry is not an object of strings'}
  end
  if name ~= ARGV[2] then table.insert(names, name) end
end
table.sort(names)
local add = {KEYS[2], '*'}
for _, name in ipairs(names) do
  table.insert(add, name)
  table.insert(add, entry[name])
end
table.insert(add, ARGV[2])
table.insert(add, service)
local id = redis.call('XADD', unpack(add))
redis.call('XDEL', KEYS[1], ARGV[1])
return {'retried', id}
