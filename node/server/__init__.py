"""swarmlm.node.server"""
