"""corral.gateway"""
