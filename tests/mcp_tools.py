"""Real MCP servers for the tests, written with the official ``mcp`` SDK: a clock and a unit converter.

Run as a program: ``python tests/mcp_tools.py clock`` serves the clock over stdio (what ``tools.mcp``
``command``/``args`` starts); ``python tests/mcp_tools.py units --http PORT`` serves the converter over
streamable HTTP at ``http://127.0.0.1:PORT/mcp``. Their tools do real work (the time in a time zone, a
conversion); the error and timeout paths come from real inputs (an unknown time zone or unit) and from a
tool that takes as long as it is told (``slow_time``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

HERE = Path(__file__).resolve()

# factor to the base unit of each kind
LENGTH = {"m": 1.0, "km": 1000.0, "cm": 0.01, "mile": 1609.344, "ft": 0.3048, "inch": 0.0254}
MASS = {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125}


def clock_server() -> MCPServer:
    server = MCPServer("clock")

    @server.tool()
    def get_time(timezone: str = "UTC") -> str:
        """The current local time in an IANA time zone, such as Europe/Paris or Asia/Tokyo."""
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone {timezone!r}") from None
        return datetime.now(zone).strftime(f"%H:%M on %A in {timezone}")

    @server.tool()
    async def slow_time(delay_s: float) -> str:
        """The current UTC time, after waiting delay_s seconds (a slow tool)."""
        await asyncio.sleep(delay_s)
        return datetime.now(ZoneInfo("UTC")).strftime("%H:%M UTC")

    @server.tool()
    def leap_years(start: int, end: int) -> str:
        """Every leap year from start to end (a long answer)."""
        return ", ".join(str(y) for y in range(start, end + 1) if y % 4 == 0 and (y % 100 or y % 400 == 0))

    return server


def units_server() -> MCPServer:
    server = MCPServer("units")

    @server.tool()
    def convert_units(value: float, from_unit: str, to_unit: str) -> str:
        """Convert a length (m, km, cm, mile, ft, inch), a mass (kg, g, lb, oz) or a temperature (C, F)."""
        if {from_unit, to_unit} <= {"C", "F"}:
            result = value * 9 / 5 + 32 if (from_unit, to_unit) == ("C", "F") else \
                (value - 32) * 5 / 9 if (from_unit, to_unit) == ("F", "C") else value
            return f"{value:g} {from_unit} = {result:.4g} {to_unit}"
        for table in (LENGTH, MASS):
            if from_unit in table and to_unit in table:
                return f"{value:g} {from_unit} = {value * table[from_unit] / table[to_unit]:.4g} {to_unit}"
        raise ToolError(f"cannot convert {from_unit!r} to {to_unit!r}")

    return server


def stdio_command(name: str) -> dict:
    """The ``tools.mcp`` entry that starts server ``name`` over stdio."""
    return {"name": name, "command": sys.executable, "args": [str(HERE), name]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server", choices=["clock", "units"])
    parser.add_argument("--http", type=int, help="serve streamable HTTP on this port (default: stdio)")
    args = parser.parse_args()
    server = clock_server() if args.server == "clock" else units_server()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run()


if __name__ == "__main__":
    main()
