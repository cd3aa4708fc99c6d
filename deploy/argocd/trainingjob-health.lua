-- Argo CD health of a ckpt.dev TrainingJob (Lua 5.1, as Argo CD runs it; the object is `obj`).
-- Healthy: Succeeded. Degraded: Failed. Progressing: Pending, Running, Snapshotting, and any
-- spec change the operator has not observed yet.
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

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to start the training job"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition("Ready")
local phase = obj.status.phase

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = messageOf(ready, "Training job succeeded")
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = messageOf(ready, "Training job failed")
  return hs
end

hs.status = "Progressing"
if phase == "Running" then
  hs.message = messageOf(ready, "Training is running")
elseif phase == "Snapshotting" then
  hs.message = messageOf(ready, "Turning the output into checkpoints")
else
  hs.message = messageOf(ready, "Training job is pending")
end
return hs
