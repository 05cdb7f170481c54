"""corral.project"""
