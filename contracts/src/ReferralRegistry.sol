// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title ReferralRegistry
/// @notice Records who referred whom. Each user can be registered once.
contract ReferralRegistry {
    mapping(address => address) public referrerOf;

    event ReferralRegistered(address indexed user, address indexed referrer);

    error AlreadyRegistered(address user);
    error InvalidReferrer(address user, address referrer);

    function register(address referrer) external {
        _register(msg.sender, referrer);
    }

    /// @notice Test helper: register any user without their signature.
    function registerFor(address user, address referrer) external {
        _register(user, referrer);
    }

    function _register(address user, address referrer) internal {
        if (referrer == address(0) || referrer == user) revert InvalidReferrer(user, referrer);
        if (referrerOf[user] != address(0)) revert AlreadyRegistered(user);
        referrerOf[user] = referrer;
        emit ReferralRegistered(user, referrer);
    }
}
