"""Easel's Discord side: settings, the store, the fair scheduler and the discord.py client."""
