"""`fer-edge daemon`: an always-on camera service built on the edge runtime.

config (flags > TOML > FER_EDGE_* > defaults) -> capture (newest-frame thread, reconnects) ->
the runtime's EmotionPipeline -> tracking (face identity, smoothed emotions) -> outputs: jsonl,
mqtt (state/events/availability), http_server (/healthz, /state, /metrics from metrics).
service holds the loop; command is the click verb.
"""
