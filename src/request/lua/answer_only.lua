-- Answers without changing anything (invalid input, unknown post), and remembers the answer
-- like any other.
local function check_request() return nil end
local function apply_request()
  remember(response)
  answer(response)
  return 'answered'
end
