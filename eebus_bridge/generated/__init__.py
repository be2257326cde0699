"""Generated gRPC code for the eebus_grpc_api wire interface. DO NOT EDIT.

Made by tools/gen_grpc.py from proto/ with betterproto2-compiler (grpclib, async).
"""

# trio_asyncio before grpclib: grpclib keeps a reference to asyncio.current_task at import, and
# on Python >= 3.12 only trio_asyncio's replacement of it sees trio-asyncio's loop.
import trio_asyncio  # noqa: F401
