-- Argo CD health of a ckpt.dev Checkpoint (Lua 5.1, as Argo CD runs it; the object is `obj`).
-- Healthy: Ready. Degraded: Failed or Stalled. Progressing: everything on the way, with the
-- operator's own words (the Ready condition's message).
local hs = {}

local function condition(conditionType)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == conditionType then
        return c
      end
    end
  end
  return nil
end

local function messageOf(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local ready = condition("Ready")
local stalled = condition("Stalled")

-- Deletion waits on the in-use protection finalizer while live TrainingJobs use the checkpoint.
-- (Argo CD reports "Pending deletion" on its own before it asks this script; other tools may not.)
if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  local users = {}
  if obj.status ~= nil and obj.status.usedBy ~= nil then
    for _, u in ipairs(obj.status.usedBy) do
      if type(u) == "table" then
        table.insert(users, u.name or "?")
      else
        table.insert(users, tostring(u))
      end
    end
  end
  if #users > 0 then
    hs.message = "Deletion blocked: in use by " .. table.concat(users, ", ")
  else
    hs.message = messageOf(ready, "Deletion in progress")
  end
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to process the checkpoint"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = obj.status.phase
if phase == "Failed" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  if stalled ~= nil and stalled.status == "True" then
    hs.message = messageOf(stalled, messageOf(ready, "Checkpoint is stalled"))
  else
    hs.message = messageOf(ready, "Checkpoint failed")
  end
  return hs
end

if (ready ~= nil and ready.status == "True") or phase == "Ready" then
  hs.status = "Healthy"
  hs.message = messageOf(ready, "Checkpoint is ready")
  return hs
end

hs.status = "Progressing"
if phase == "Importing" then
  hs.message = messageOf(ready, "Importing the checkpoint data")
elseif phase == "Pending" then
  hs.message = messageOf(ready, "Checkpoint is pending")
else
  hs.message = messageOf(ready, "Waiting for the checkpoint to become ready")
end
return hs
