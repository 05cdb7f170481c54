"""corral.harness"""
