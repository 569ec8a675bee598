"""Every typed app key of the gateway, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.app import Gateway

gateway_key: web.AppKey[Gateway] = web.AppKey("gateway")
