"""corral.engine: what every operator surface shares (the control API, the dashboard, the
CLI, MCP), so that none of them goes through another.

    actions     the operator actions (trigger, pause, scale, kill, release a lock,
                replay), each checked, applied to the store and audited
    token       operator tokens: made, hashed, verified
    deliveries  the queue items a webhook delivery becomes, and the replay of a
                recorded delivery

It sits under the gateway and over the scheduler (an action wakes the dispatcher); the
store's own rules stay in ``corral.store`` (see ``corral.store.protocols``).
"""
