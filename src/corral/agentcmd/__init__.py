"""corral.agentcmd"""
