"""swarmlm.crypto"""
