"""The gateway: health and the control API now; the agent API, webhooks and the dashboard later."""
