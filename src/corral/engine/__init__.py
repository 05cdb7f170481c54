"""corral.engine"""
