-- Prosody: let users of your server register with pushgate and publish their pushes to it.
-- Goes into /etc/prosody/prosody.cfg.lua (or a file it includes).

-- mod_cloud_notify (prosody-modules) turns offline/hibernated messages into XEP-0357 publishes.
modules_enabled = {
  -- … your other modules …
  "smacks";        -- stream management: Conversations enables push only with it
  "cloud_notify";
}

-- Send the real body and sender in pushes (pushgate cuts bodies to 500 characters and passes
-- them to the provider; leave these off if your users' messages must not reach Apple/Google).
push_notification_with_body = false
push_notification_with_sender = false
-- A registration is disabled after this many error replies from pushgate in a row (default 16;
-- a success resets the count). pushgate answers every temporary trouble with a `wait` error,
-- which Prosody never counts, so only a dead token or an unknown node (item-not-found) counts.
push_max_errors = 16

-- pushgate as a component of this server. The secret is pushgate's component.secret; pushgate
-- connects to component_ports (default 5347) on component_interfaces (keep it on loopback).
component_ports = { 5347 }
component_interfaces = { "127.0.0.1" }

Component "push.example.org"
  component_secret = "the same secret as component.secret in pushgate.toml"
  -- a restarted pushgate replaces the old connection instead of being refused with <conflict/>
  component_conflict_resolve = "kick_old"

-- Users of OTHER servers reach push.example.org over s2s: publish
--   _xmpp-server._tcp.push.example.org. SRV 0 5 5269 xmpp.example.org.
-- and make sure your certificate covers push.example.org.
