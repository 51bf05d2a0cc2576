"""swarmlm.testnet"""
