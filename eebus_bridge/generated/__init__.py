"""Generated gRPC code for the eebus_grpc_api wire interface. DO NOT EDIT.

Made by tools/gen_grpc.py from proto/ with betterproto2-compiler (grpclib, async).
"""
