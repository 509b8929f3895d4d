"""(family placeholder)"""
